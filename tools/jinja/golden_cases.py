"""The cases make_jinja_golden.py renders: unit cases for each language feature, and real chat
templates over a range of conversations. A case is a dict with a name, an inline `template` or a
`template_file`, a `context`, and optionally `error`: a substring the error message must contain
(Jinja2's message is checked for it here; apus's is checked by tests/test_jinja.cpp)."""

BASE = {
    "xs": [1, 2, 3],
    "d": {"a": 1, "b": {"c": "deep"}, "x y": "spaced"},
    "s": "hello",
    "u": "héllo 世界 😀",
    "n": 7,
    "f": 2.5,
    "t": True,
    "none_val": None,
    "empty": [],
    "users": [{"name": "Ann", "age": 31, "tags": ["a"]}, {"name": "bob", "age": 25},
              {"name": "Cid", "age": 31, "tags": []}],
    "words": ["b", "A", "c", "a", "B"],
    "nested": {"list": [{"k": 1}, {"k": 2}], "map": {"inner": {"v": "x"}}},
}


def unit_cases():
    cases = []

    def U(name, template, context=None, error=None):
        c = {"name": "unit/" + name, "template": template, "context": BASE if context is None else context}
        if error is not None:
            c["error"] = error
        cases.append(c)

    # ---- whitespace control, trim_blocks, lstrip_blocks ----
    U("ws/trim_blocks", "a\n{% if true %}\nb\n{% endif %}\nc")
    U("ws/lstrip_line_start", "x\n    {% if true %}\n    y\n    {% endif %}\nz")
    U("ws/lstrip_not_line_start", "a  {% if true %}b{% endif %}  c")
    U("ws/lstrip_template_start", "   {% if true %}x{% endif %}")
    U("ws/variable_not_stripped", "  {{ 'v' }}  \n  {{ 'w' }}\n")
    U("ws/minus_both", "a  {%- if true -%}  b  {%- endif -%}  c")
    U("ws/minus_newlines", "a\n\n  {%- if true %}\n\n b\n\n{%- endif %}\n\nc")
    U("ws/plus_disables_lstrip", "a\n    {%+ if true %}b{% endif %}")
    U("ws/plus_disables_trim", "{% if true +%}\nx\n{% endif %}")
    U("ws/variable_minus", "x  {{- 'y' -}}  z")
    U("ws/variable_minus_newline", "a\n{{- 'b' -}}\nc")
    U("ws/comment_lstrip_trim", "a\n  {# comment #}\nb")
    U("ws/comment_minus", "a  {#- c -#}  b")
    U("ws/comment_inline", "a {# c #} b")
    U("ws/comment_with_tags", "{# {% if %} {{ x }} #}ok")
    U("ws/trailing_newline_dropped", "abc\n")
    U("ws/two_trailing_newlines", "abc\n\n")
    U("ws/crlf", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc")
    U("ws/tabs", "\t{% if true %}\n\tx\n\t{% endif %}\n")
    U("ws/after_variable_newline", "{{ 'a' }}\n  {% if true %}b{% endif %}")
    U("ws/after_variable_minus_newline", "{{ 'a' -}}\n  {% if true %}b{% endif %}")
    U("ws/only_whitespace_line", "a\n  \n{% if true %}b{% endif %}")
    U("ws/block_mid_line_trim", "a {% if true %}\nb{% endif %}\nc")
    U("ws/unicode_space_strip", "a\u3000\u00a0 {%- if true %}b{% endif %}")
    U("ws/raw", "{% raw %}{{ not parsed }} {% if %}{% endraw %}")
    U("ws/raw_minus", "a  {%- raw -%}  {{x}}  {%- endraw -%}  b")
    U("ws/raw_lstrip", "x\n  {% raw %}\n{{ y }}\n  {% endraw %}\nz")
    U("ws/multiline_tag", "{% if\n  true\n%}x{% endif %}")
    U("ws/nested_braces", "{{ {'a': {'b': 1}} }}|{{ {'a':1}}}")
    U("ws/lone_braces", "{ } {x} }} %} #}")
    U("ws/set_lines", "{% set a = 1 %}\n{% set b = 2 %}\n{{ a + b }}\n")
    U("ws/for_lines", "<ul>\n{% for x in xs %}\n  <li>{{ x }}</li>\n{% endfor %}\n</ul>\n")
    U("ws/plus_variable", "{{+ 'p' }}")
    U("ws/delimiters_in_strings", "{% set x = \"%}\" %}{{ x }}{{ '}}' }}{{ '{{' }}{{ \"{# #}\" }}")
    U("ws/comment_then_block_same_line", "a\n  {# c #}  {% if true %}\nb{% endif %}")
    U("ws/lstrip_after_comment_newline", "{# c #}\n    {% if true %}x{% endif %}")
    U("ws/raw_keeps_delimiters", "{% raw %}\n{%- if x -%}\n{{ y }}\n{% endraw %}")

    # ---- literals and printing (Python str()/repr()) ----
    U("lit/strings", r"""{{ 'a\'b' }}|{{ "q\"q" }}|{{ 'tab\tnl\nbs\\' }}|{{ '\u00e9\x41\101' }}|{{ 'a' 'b' "c" }}""")
    U("lit/unknown_escape", r"{{ 'a\d\q' }}")
    U("lit/numbers", "{{ 42 }} {{ -7 }} {{ 1_000 }} {{ 0x1F }} {{ 0b101 }} {{ 0o17 }} {{ 1.5 }} {{ 1e3 }} {{ 2.5e-3 }}")
    U("lit/float_repr", "{{ 1.0 }} {{ 0.1 + 0.2 }} {{ 1 / 3 }} {{ 1e16 }} {{ 1e15 }} {{ 1e-5 }} {{ 0.0001 }} {{ 123456789.125 }} {{ 3e20 }} {{ -0.0 }} {{ 2.0 ** 70 }}")
    U("lit/bools_none", "{{ true }} {{ True }} {{ false }} {{ False }} {{ none }} {{ None }} {{ none_val }}")
    U("lit/list_repr", "{{ [1, 'a', none, true, 2.5, [], {}, ()] }}")
    U("lit/tuple_repr", "{{ (1,) }} {{ (1, 2) }} {{ () }} {{ ('a', [1]) }}")
    U("lit/dict_repr", "{{ {'a': 1, 'b': [1, {'c': none}], 2: 'two'} }}")
    U("lit/string_repr_quotes", """{{ ["it's", 'say "hi"', "both ' \\"", 'plain'] }}""")
    U("lit/string_repr_escapes", r"""{{ ['tab\t', 'nl\n', 'cr\r', 'bs\\', 'nul\x00', 'del\x7f', 'bell\x07'] }}""")
    U("lit/string_repr_unicode", r"""{{ ['é中😀', 'nbsp\u00a0', 'zwsp\u200b', 'ls\u2028'] }}""")
    U("lit/context_values", "{{ xs }} {{ d }} {{ users[0] }} {{ f }} {{ t }}")
    U("lit/print_tuple", "{{ 1, 'a' }}")

    # ---- operators ----
    U("op/arith", "{{ 7 + 3 }} {{ 7 - 10 }} {{ 2 * 3.5 }} {{ 7 / 2 }} {{ 8 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }}")
    U("op/pow", "{{ 2 ** 10 }} {{ 2 ** -2 }} {{ 2 ** 0.5 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ (-2) ** 3 }} {{ 10 ** 0 }}")
    U("op/float_floordiv_mod", "{{ 7.5 // 2 }} {{ -7.5 // 2 }} {{ -7.5 % 2 }} {{ 7.5 % -2 }} {{ 5 // 0.5 }}")
    U("op/precedence", "{{ 2 + 3 * 4 }} {{ (2 + 3) * 4 }} {{ 'x' ~ 2 * 3 }} {{ '1' ~ '2' + '3' }} {{ 'a' ~ (1 + 2) }} {{ not 1 == 2 }} {{ 10 - 2 - 3 }} {{ 100 / 10 / 5 }} {{ 2 * 3 % 4 }}")
    U("op/bool_arith", "{{ true + true }} {{ true * 3 }} {{ 1 - false }} {{ true / 2 }}")
    U("op/concat", "{{ 'a' ~ 1 ~ none ~ true ~ 2.0 ~ undefined_name ~ [1] }}")
    U("op/string_list_ops", "{{ 'ab' + 'cd' }} {{ 'ab' * 3 }} {{ 3 * 'x' }} {{ [1] + [2, 3] }} {{ [0] * 3 }} [{{ 'x' * 0 }}{{ 'y' * -1 }}] {{ (1,) + (2,) }}")
    U("op/compare", "{{ 1 < 2 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ 1 == 1.0 }} {{ 1 == '1' }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ 'abc' >= 'abd' }} {{ none == none }} {{ true == 1 }} {{ 2 != 2 }} {{ [1] == [1] }} {{ {'a': 1} == {'a': 1} }} {{ (1,) == [1] }}")
    U("op/compare_unicode", "{{ 'é' > 'z' }} {{ 'B' < 'a' }} {{ '' < 'a' }}")
    U("op/in", "{{ 'a' in 'cat' }} {{ 1 in xs }} {{ 'a' in d }} {{ 3 not in [1, 2] }} {{ 'x' not in 'abc' }} {{ 'a' in undefined_name }} {{ undefined_name in xs }} {{ '' in 'abc' }} {{ (1, 2) in [(1, 2)] }}")
    U("op/and_or_operands", "{{ 0 or 'x' }}|{{ '' or none }}|{{ 'a' and 'b' }}|{{ 0 and 'b' }}|{{ [] or [1] }}|{{ not '' }}|{{ not [1] }}|{{ none or undefined_name }}|{{ 1 and 0 or 5 }}")
    U("op/ternary", "{{ 'y' if true else 'n' }} {{ 'y' if 0 else 'n' }} [{{ 'y' if false }}] {{ 1 if false else 2 if true else 3 }} {{ ('a' if false) is defined }}")
    U("op/unary", "{{ -(3) }} {{ +3 }} {{ -1.5 }} {{ - -2 }} {{ -n }} {{ -xs[0] }}")
    U("op/filter_binds_tighter", "{{ -1|abs }} {{ '1' + 2|string }} {{ 'a' ~ 'b'|upper }} {{ (1 + 2)|string }}")

    # ---- attribute / item access, undefined ----
    U("access/basic", "{{ d.a }} {{ d['a'] }} {{ d.b.c }} {{ d['b']['c'] }} {{ xs[0] }} {{ xs[-1] }} {{ xs.1 }} {{ d['x y'] }} {{ s[1] }} {{ u[1] }} {{ u[-1] }}")
    U("access/missing", "[{{ d.missing }}][{{ xs[10] }}][{{ s[99] }}][{{ none_val.a }}][{{ d.missing is defined }}][{{ n.real2 }}]")
    U("access/undefined_prints_empty", "[{{ undefined_name }}][{{ undefined_name is defined }}][{{ undefined_name is undefined }}]")
    U("access/undefined_iterates_empty", "{% for x in undefined_name %}x{% else %}empty{% endfor %} {{ undefined_name|length }} {{ undefined_name|list }}")
    U("access/dict_methods", "{{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 5) }}")
    U("access/method_beats_key", "{{ m.items()|list }} {{ m['items'] is callable }} {{ m.title }} {{ m.keys is callable }}",
      {"m": {"items": "item-value", "title": "t"}})
    U("access/getitem_attr_fallback", "{{ s['upper']() }} {{ xs['count'](2) }}")
    U("access/nested_json", "{{ nested.list[1].k }} {{ nested['map'].inner.v }} {{ nested.list|map(attribute='k')|list }}")
    U("access/int_key_dict", "{{ {1: 'one', 'a': 'A'}[1] }} {{ {1: 'one'}[1.0] }} {{ {(1, 2): 'p'}[(1, 2)] }}")
    U("access/unsafe_attr_prints_empty", "[{{ xs.append }}][{{ xs.__class__ }}][{{ d.update }}]")
    U("access/undefined_attr_error", "{{ undefined_name.attr }}", error="'undefined_name' is undefined")
    U("access/undefined_item_error", "{{ undefined_name['k'] }}", error="'undefined_name' is undefined")
    U("access/missing_chain_error", "{{ d.missing.deeper }}", error="'dict object' has no attribute 'missing'")
    U("access/list_index_chain_error", "{{ xs[10].a }}", error="list object has no element 10")
    U("access/none_attr_chain_error", "{{ none_val.a.b }}", error="'None' has no attribute 'a'")
    U("access/str_attr_chain_error", "{{ s.foo.bar }}", error="'str object' has no attribute 'foo'")

    # ---- slicing ----
    U("slice/string", "{{ s[1:3] }} {{ s[:2] }} {{ s[-2:] }} {{ s[::-1] }} {{ s[::2] }} {{ s[5:1:-1] }} [{{ s[10:] }}] {{ s[-100:100] }} [{{ s[3:1] }}] {{ s[:-1] }} {{ s[1:-1] }}")
    U("slice/list", "{{ xs[1:] }} {{ xs[:-1] }} {{ xs[::-1] }} {{ xs[-100:100] }} {{ xs[::2] }} {{ (1, 2, 3)[1:] }} {{ xs[2:0:-1] }} {{ [][1:] }}")
    U("slice/unicode", "{{ u[1:3] }} {{ u[-1] }} {{ u|length }} {{ u[::-1] }} {{ u[6:8] }}")
    U("slice/step_zero", "{{ xs[::0] }}", error="slice step cannot be zero")

    # ---- string methods ----
    U("str/split", "{{ 'a,b,,c'.split(',') }} {{ '  a  b \n c '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '  x  y  '.rsplit(None, 1) }} {{ ''.split() }} {{ ''.split(',') }} {{ 'a  b'.split(' ') }}")
    U("str/split_think", "{{ c.split('</think>')[-1].lstrip('\\n') }}|{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}",
      {"c": "<think>\nreasoning here\n</think>\n\nThe answer."})
    U("str/strip", "[{{ '  x  '.strip() }}][{{ '  x  '.lstrip() }}][{{ '  x  '.rstrip() }}][{{ 'xxhixx'.strip('x') }}][{{ '\\n\\tx\\n'.strip() }}][{{ 'abcba'.strip('ab') }}][{{ '\u3000x\u00a0'.strip() }}]")
    U("str/affixes", "{{ s.startswith('he') }} {{ s.endswith('lo') }} {{ s.startswith(('x', 'h')) }} {{ s.endswith(('x', 'y')) }} {{ s.startswith('') }} {{ s.startswith('l', 2) }} {{ s.endswith('ll', 0, 4) }}")
    U("str/case", "{{ 'hello world'.upper() }} {{ 'HeLLo'.lower() }} {{ \"they're bill's friends\".title() }} {{ 'hello WORLD'.capitalize() }} {{ 'AbC'.swapcase() }} {{ 'ÉCOLE é'.lower() }} {{ 'straße'.upper() == 'STRASSE' }}")
    U("str/replace_find", "{{ 'aaa'.replace('a', 'b') }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'abc'.replace('', '-') }} {{ s.find('l') }} {{ s.rfind('l') }} {{ s.find('z') }} {{ s.count('l') }} {{ 'aaaa'.count('aa') }} {{ u.find('世') }} {{ s.index('e') }}")
    U("str/join_format", "{{ ', '.join(['a', 'b']) }} {{ '-'.join('abc') }} {{ '{} and {}'.format('x', 1) }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{name}!'.format(name='hi') }} {{ '{:>6}|{:.3f}|{!r}|{{}}'.format('ab', 2.5, 'q') }}")
    U("str/predicates", "{{ '123'.isdigit() }} {{ '12a'.isdigit() }} {{ 'abc'.isalpha() }} {{ 'a1'.isalnum() }} {{ '  '.isspace() }} {{ 'ABC'.isupper() }} {{ 'abc'.islower() }} {{ ''.isdigit() }}")
    U("str/misc", "{{ 'a\\nb\\r\\nc'.splitlines() }} {{ 'x'.center(5, '*') }} {{ 'ab'.ljust(4, '.') }} {{ 'ab'.rjust(4) }} {{ '42'.zfill(5) }} {{ 'a-b-c'.partition('-') }} {{ 'a-b-c'.rpartition('-') }} {{ 'prefix_x'.removeprefix('prefix_') }}")
    U("str/percent_format", "{{ '%s-%d' % ('a', 3) }} {{ '%.2f|%5d|%-4s|%x' % (3.14159, 42, 'ab', 255) }} {{ '%s' % 'solo' }} {{ '%(a)s/%(b)s' % {'a': 1, 'b': 2} }} {{ '100%%' % () }}")
    U("str/methods_on_unicode", "{{ u.upper() }} {{ u.split(' ') }} {{ u.replace('世界', 'world') }} {{ u.startswith('hé') }}")

    # ---- filters ----
    U("filter/trim_strip", "[{{ '  a b  '|trim }}][{{ 'xxaxx'|trim('x') }}][{{ '\\n x \\n'|trim }}][{{ undefined_name|trim }}]")
    U("filter/case", "{{ 'hello world'|upper }} {{ 'HeLLo'|lower }} {{ 'hello WORLD'|capitalize }} {{ \"hello-world (foo) bar's\"|title }} {{ 'über'|upper }}")
    U("filter/length_count", "{{ xs|length }} {{ s|length }} {{ d|length }} {{ u|count }} {{ ''|length }} {{ empty|length }}")
    U("filter/join", "{{ xs|join }} {{ xs|join(', ') }} {{ users|join(', ', attribute='name') }} {{ [1, none, 'a']|join('|') }} {{ 'abc'|join('.') }}")
    U("filter/replace", "{{ 'aaa'|replace('a', 'b') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'hello'|replace('l', '') }} {{ 1234|replace(2, 9) }}")
    U("filter/default", "{{ undefined_name|default('dflt') }} {{ none_val|default('x') }} {{ ''|default('e', true) }} {{ 0|d('zero', boolean=true) }} {{ 'v'|default('x') }} [{{ undefined_name|default }}]")
    U("filter/items_dictsort", "{{ d|items|list }} {{ {'b': 2, 'A': 1, 'c': 0}|dictsort }} {{ {'b': 2, 'A': 1}|dictsort(true) }} {{ {'b': 2, 'a': 3}|dictsort(by='value') }} {{ {'b': 1, 'a': 2}|dictsort(reverse=true) }} {{ undefined_name|items|list }}")
    U("filter/list_first_last", "{{ 'abc'|list }} {{ d|list }} {{ xs|first }} {{ xs|last }} {{ 'xyz'|first }} {{ 'xyz'|last }} [{{ empty|first }}][{{ empty|last }}] {{ d|first }}")
    U("filter/string_int_float", "{{ 42|string }} {{ [1]|string }} {{ '42'|int }} {{ '4.7'|int }} {{ 'x'|int }} {{ 'x'|int(9) }} {{ '0x1A'|int(0, 16) }} {{ ' 12 '|int }} {{ 3.99|int }} {{ true|int }} {{ '1.5'|float }} {{ 'x'|float }} {{ 3|float }} {{ '1e3'|float }} {{ none_val|int }}")
    U("filter/abs_round", "{{ -3|abs }} {{ -2.5|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 1.2345|round(2, 'floor') }} {{ 1.2|round(0, 'ceil') }} {{ 5|round }} {{ 0.125|round(2) }} {{ -1.5|round }} {{ 1234|round(-2) }}")
    U("filter/sort", "{{ [3, 1, 2]|sort }} {{ [3, 1, 2]|sort(reverse=true) }} {{ words|sort }} {{ words|sort(case_sensitive=true) }} {{ users|sort(attribute='age')|map(attribute='name')|list }} {{ users|sort(attribute='age,name')|map(attribute='name')|list }} {{ users|sort(attribute='name', reverse=true)|map(attribute='name')|join(',') }}")
    U("filter/unique", "{{ [1, 2, 1, 3, 2]|unique|list }} {{ words|unique|list }} {{ words|unique(case_sensitive=true)|list }} {{ users|unique(attribute='age')|map(attribute='name')|list }}")
    U("filter/reverse", "{{ 'abc'|reverse }} {{ xs|reverse|list }} {{ u|reverse }}")
    U("filter/map", "{{ users|map(attribute='name')|list }} {{ ['a', 'b']|map('upper')|list }} {{ users|map(attribute='tags', default='none')|list }} {{ ['1', '2']|map('int')|sum }} {{ xs|map('string')|join('+') }} {{ [' a ', 'b ']|map('trim')|list }} {{ empty|map('upper')|list }}")
    U("filter/map_dotted", "{{ nested.list|map(attribute='k')|list }} {{ [[1, 2], [3, 4]]|map(attribute='1')|list }}")
    U("filter/select_reject", "{{ xs|select('odd')|list }} {{ xs|reject('odd')|list }} {{ [0, 1, '', 'a', none]|select|list }} {{ xs|select('greaterthan', 1)|list }} {{ xs|select('in', [1, 3])|list }} {{ words|select('equalto', 'a')|list }} {{ xs|reject('eq', 2)|list }}")
    U("filter/selectattr", "{{ users|selectattr('age', 'equalto', 31)|map(attribute='name')|list }} {{ users|rejectattr('age', '==', 31)|map(attribute='name')|list }} {{ users|selectattr('tags')|map(attribute='name')|list }} {{ users|selectattr('tags', 'defined')|map(attribute='name')|list }} {{ users|rejectattr('tags', 'undefined')|list|length }}")
    U("filter/indent", "[{{ 'a\\nb\\n\\nc'|indent }}][{{ 'a\\nb'|indent(2, true) }}][{{ 'a\\n\\nb'|indent(2, blank=true) }}][{{ 'x\\ny'|indent('> ') }}][{{ 'one'|indent(first=true) }}]")
    U("filter/wordcount_center", "{{ 'Hello, world! 2 words_ok'|wordcount }} [{{ 'ab'|center(6) }}] {{ 'x y'|wordcount }}")
    U("filter/sum_min_max", "{{ xs|sum }} {{ xs|sum(start=10) }} {{ users|sum(attribute='age') }} {{ [1.5, 2]|sum }} {{ xs|min }} {{ xs|max }} {{ words|min }} {{ words|max }} {{ words|max(case_sensitive=true) }} {{ users|max(attribute='age')|attr('name') }} {{ users|min(attribute='name') }} [{{ empty|max }}]")
    U("filter/escape_safe", "{{ '<a href=\"x\">&\\'</a>'|escape }} {{ '<b>'|e }} {{ '<i>'|safe }} {{ 5|escape }}")
    U("filter/batch", "{{ xs|batch(2)|list }} {{ xs|batch(2, 'x')|list }} {{ 'abcde'|batch(2)|list }}")
    U("filter/attr", "{{ d|attr('keys') is callable }} [{{ d|attr('a') }}] {{ s|attr('upper')() }}")
    U("filter/format", "{{ '%s=%d'|format('a', 5) }} {{ '%(x)s'|format(x='kw') }} {{ '%05.1f'|format(3.14159) }}")
    U("filter/chained", "{{ users|map(attribute='name')|map('lower')|sort|join(', ')|upper }}")
    U("filter/unknown", "{{ s|nope }}", error="No filter named 'nope'")
    U("filter/unknown_in_if_ok", "{% if false %}{{ s|nope }}{% endif %}ok{{ s if true else s|nope }}")
    U("filter/unknown_in_dead_loop", "{% for y in [] %}{{ s|nope }}{% endfor %}", error="No filter named 'nope'")
    U("filter/unknown_runtime_in_if", "{% if true %}{{ s|nope }}{% endif %}", error="No filter named 'nope'")

    # ---- tojson (transformers' filter: json.dumps, ensure_ascii=False, keys in order) ----
    U("tojson/basic", "{{ d|tojson }} {{ xs|tojson }} {{ 'str'|tojson }} {{ 1.5|tojson }} {{ none_val|tojson }} {{ t|tojson }} {{ 42|tojson }} {{ [1.0, 1e20, -0.5]|tojson }}")
    U("tojson/unicode", "{{ {'text': 'héllo 世界 😀', 'emoji': '👍🏽'}|tojson }} {{ u|tojson(ensure_ascii=true) }}")
    U("tojson/escapes", r"""{{ {'q': 'say "hi"', 'bs': 'a\\b', 'nl': 'x\ny', 'tab': '\t', 'ctl': '\x01\x1f', 'del': '\x7f', 'slash': '</tag>'}|tojson }}""")
    U("tojson/indent", "{{ nested|tojson(indent=2) }}\n{{ users|tojson(indent=4) }}\n{{ {'e': [], 'f': {}}|tojson(indent=1) }}\n{{ [[1, [2]]]|tojson(indent=0) }}")
    U("tojson/indent_string", "{{ xs|tojson(indent='\\t') }}")
    U("tojson/separators_sort", "{{ d|tojson(separators=(',', ':')) }} {{ {'b': 1, 'a': 2, 'c': {'z': 0, 'y': 1}}|tojson(sort_keys=true) }} {{ d|tojson(indent=2, separators=(', ', ' = ')) }}")
    U("tojson/key_types", "{{ {1: 'a', none: 2, true: 3, 2.5: 'f'}|tojson }} {{ (1, 'two')|tojson }} {{ {'k': (1,)}|tojson }}")
    U("tojson/tools_schema", "{{ tools[0]|tojson }}\n{{ tools[0]|tojson(indent=4) }}", {"tools": [TOOL_WEATHER]})
    U("tojson/undefined_error", "{{ undefined_name|tojson }}", error="is not JSON serializable")
    U("tojson/namespace_error", "{{ namespace(a=1)|tojson }}", error="is not JSON serializable")

    # ---- tests ----
    U("test/types", "{{ s is string }} {{ n is number }} {{ f is number }} {{ t is number }} {{ n is integer }} {{ t is integer }} {{ f is float }} {{ n is float }} {{ d is mapping }} {{ xs is mapping }} {{ t is boolean }} {{ 1 is boolean }}")
    U("test/iterable_sequence", "{{ xs is iterable }} {{ s is iterable }} {{ d is iterable }} {{ n is iterable }} {{ xs is sequence }} {{ s is sequence }} {{ d is sequence }} {{ n is sequence }} {{ undefined_name is iterable }} {{ none_val is iterable }}")
    U("test/none_true_false", "{{ none_val is none }} {{ 0 is none }} {{ t is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }} {{ undefined_name is none }} {{ none_val is not none }}")
    U("test/defined", "{{ s is defined }} {{ nope is defined }} {{ nope is not defined }} {{ d.a is defined }} {{ d.zz is defined }} {{ nope is undefined }} {{ none_val is defined }}")
    U("test/numbers", "{{ n is odd }} {{ n is even }} {{ 3.0 is odd }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ -3 is odd }}")
    U("test/compare", "{{ 5 is eq 5 }} {{ 5 is equalto 5 }} {{ 5 is ne 4 }} {{ 5 is lt 6 }} {{ 5 is le 5 }} {{ 5 is gt 6 }} {{ 5 is ge 5 }} {{ 5 is greaterthan 4 }} {{ 5 is lessthan 4 }} {{ 'a' is in 'cat' }} {{ 2 is in xs }}")
    U("test/callable_case", "{{ range is callable }} {{ s is callable }} {{ s.upper is callable }} {{ 'ABC' is upper }} {{ 'abc' is lower }} {{ 'aB' is lower }} {{ '12' is lower }}")
    U("test/sameas_filter_test", "{{ none_val is sameas none }} {{ t is sameas true }} {{ 1 is sameas true }} {{ 'upper' is filter }} {{ 'nope' is filter }} {{ 'odd' is test }}")
    U("test/not_precedence", "{{ not s is defined }} {{ not nope is defined }} {{ s is not string or n is number }}")
    U("test/unknown", "{{ s is nope }}", error="No test named 'nope'")

    # ---- statements ----
    U("if/elif_else", "{% for v in [1, 2, 3, 'x'] %}{% if v == 1 %}one{% elif v == 2 %}two{% elif v is string %}str{% else %}other{% endif %};{% endfor %}")
    U("if/truthiness", "{% for v in [0, 1, '', 'a', [], [0], {}, {'k': 0}, none, 0.0, undefined_name] %}{{ 'T' if v else 'F' }}{% endfor %}")
    U("for/loop_vars", "{% for x in ['a', 'b', 'c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}")
    U("for/previtem_nextitem", "{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{{ loop.previtem is defined }}{% endfor %}")
    U("for/cycle_changed_depth", "{% for x in [1, 1, 2, 2, 3] %}{{ loop.cycle('odd', 'even') }}:{{ loop.changed(x) }}:{{ loop.depth }}{{ loop.depth0 }} {% endfor %}")
    U("for/else", "{% for x in [] %}x{% else %}empty{% endfor %}|{% for x in xs %}{{ x }}{% else %}empty{% endfor %}")
    U("for/filter", "{% for x in range(10) if x is odd %}{{ x }}/{{ loop.index }}/{{ loop.length }}/{{ loop.last }} {% endfor %}")
    U("for/filter_all_rejected_else", "{% for x in xs if x > 10 %}{{ x }}{% else %}none{% endfor %}")
    U("for/unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, (b, c) in [(1, (2, 3))] %}{{ a }}{{ b }}{{ c }}{% endfor %}{% for a, b in ['xy', 'zw'] %}{{ b }}{{ a }}{% endfor %}")
    U("for/dict_and_string", "{% for k in d %}{{ k }},{% endfor %} {% for c in 'hé!' %}[{{ c }}]{% endfor %}")
    U("for/nested_outer_loop", "{% for x in 'ab' %}{% set outer = loop %}{% for y in 'cd' %}{{ outer.index }}{{ loop.index }}{{ x }}{{ y }} {% endfor %}{% endfor %}")
    U("for/break_continue", "{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}{% if x > 5 %}{% break %}{% endif %}{{ x }}{% endfor %}")
    U("for/break_skips_else", "{% for x in xs %}{% break %}{% else %}else{% endfor %}done")
    U("for/reverse_messages", "{% for m in msgs[::-1] %}{{ (msgs|length - 1) - loop.index0 }}:{{ m }} {% endfor %}", {"msgs": ["a", "b", "c"]})
    U("for/loop_in_else_undefined", "{% for x in [] %}{% else %}[{{ loop is defined }}]{% endfor %}")
    U("scope/set_in_loop_does_not_leak", "{% set x = 1 %}{% for i in xs %}{% set x = x + i %}{{ x }},{% endfor %}{{ x }}")
    U("scope/set_in_iteration_is_fresh", "{% for i in range(3) %}{% if i == 1 %}{% set y = 5 %}{% endif %}[{{ y }}]{% endfor %}")
    U("scope/set_in_if_leaks", "{% if true %}{% set z = 'in-if' %}{% endif %}{{ z }}")
    U("scope/namespace_across_loop", "{% set ns = namespace(total=0, names=[]) %}{% for u in users %}{% set ns.total = ns.total + u.age %}{% set ns.names = ns.names + [u.name] %}{% endfor %}{{ ns.total }} {{ ns.names }} {{ ns }}")
    U("scope/namespace_init_forms", "{% set a = namespace() %}{% set b = namespace({'k': 1}, j=2) %}{{ a }} {{ b.k }}{{ b.j }} [{{ a.missing }}]")
    U("scope/set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c, d = [3, 4] %}{{ c }}{{ d }}{% set t = 5, 6 %}{{ t }}")
    U("scope/set_tuple_error", "{% set a, b = [1] %}", error="not enough values to unpack (expected 2, got 1)")
    U("scope/unpack_too_many", "{% for a, b in [[1, 2, 3]] %}{% endfor %}", error="too many values to unpack (expected 2)")
    U("scope/set_block", "{% set x %}  hi {{ s }} {% endset %}[{{ x }}]{% set y | upper | trim %} shout {% endset %}[{{ y }}]")
    U("scope/set_block_inner_scope", "{% set v = 1 %}{% set x %}{% set v = 2 %}{{ v }}{% endset %}{{ x }}{{ v }}")
    U("scope/with", "{% set x = 1 %}{% with x = 5, y = x %}{{ x }}{{ y }}{% set x = 9 %}{{ x }}{% endwith %}{{ x }}")
    U("scope/filter_block", "{% set x = 1 %}{% filter upper %}ab{{ 'c' }}{% set x = 5 %}{{ x }}{% endfilter %}{{ x }}{% filter replace('a', 'o') | trim %}  banana  {% endfilter %}")
    U("scope/set_ns_on_non_namespace", "{% set d2 = {} %}{% set d2.a = 1 %}", error="cannot assign attribute on non-namespace object")
    U("scope/generation_block", "{% for m in ['x', 'y'] %}<{% generation %}{{ m }}{% set inner = 1 %}{% endgeneration %}>{% endfor %}[{{ inner }}]")
    U("scope/read_then_set_in_loop", "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}")
    U("scope/set_in_loop_undefined_outside", "{% for i in [1, 2] %}[{{ x }}]{% set x = 2 %}{{ x }}{% endfor %}[{{ x }}]")
    U("scope/read_then_set_in_if", "{% set x = 1 %}{% if true %}{{ x }}{% set x = 2 %}{{ x }}{% endif %}{{ x }}")
    U("scope/read_then_set_in_macro", "{% set x = 1 %}{% macro m() %}{{ x }}{% set x = 2 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}")
    U("scope/loop_var_shadows", "{% set x = 5 %}{% for x in [1, 2] %}{{ x }}{% endfor %}{{ x }}")
    U("scope/inner_loop_set_outer_name", "{% for a in [1] %}{% for b in [2] %}{% set a = 9 %}{{ a }}{% endfor %}{{ a }}{% endfor %}")
    U("scope/macro_sets_namespace", "{% set ns = namespace(a=1) %}{% macro m() %}{% set ns.a = 5 %}{% endmacro %}{{ m() }}{{ ns.a }}")
    U("scope/with_set_stays_inside", "{% with a = 1 %}{% set b = a + 1 %}{{ b }}{% endwith %}[{{ b }}]")
    U("scope/print_statement", "{% print 'a', 1 %}{% print s|upper %}")

    # ---- macros and call blocks ----
    U("macro/defaults", "{% macro greet(name, greeting='Hello', punct='!') %}{{ greeting }}, {{ name }}{{ punct }}{% endmacro %}{{ greet('Ann') }} {{ greet('Bob', 'Hi') }} {{ greet('Cy', punct='?') }} {{ greet(greeting='Yo', name='Di') }}")
    U("macro/missing_arg_undefined", "{% macro m(a, b) %}[{{ a }}|{{ b }}|{{ b is defined }}]{% endmacro %}{{ m(1) }}")
    U("macro/varargs_kwargs", "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k='v', z=0) }} {{ m(1) }}")
    U("macro/too_many_args", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, 2) }}", error="macro 'm' takes not more than 1 argument(s)")
    U("macro/unknown_kwarg", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m(1, b=2) }}", error="macro 'm' takes no keyword argument 'b'")
    U("macro/recursion", "{% macro fact(k) %}{{ 1 if k <= 1 else k * (fact(k - 1)|int) }}{% endmacro %}{{ fact(6) }}")
    U("macro/tree_recursion", "{% macro render(node) %}{{ node.name }}{% if node.children %}({% for c in node.children %}{{ render(c) }}{% if not loop.last %},{% endif %}{% endfor %}){% endif %}{% endmacro %}{{ render(tree) }}",
      {"tree": {"name": "root", "children": [{"name": "a", "children": [{"name": "a1"}]}, {"name": "b"}]}})
    U("macro/sees_outer_at_call_time", "{% set x = 1 %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 2 %}{{ m() }}")
    U("macro/defined_in_loop_closure", "{% set x = 1 %}{% for i in xs %}{% macro m() %}{{ x }}{{ i }}{% endmacro %}{% set x = i * 10 %}{{ m() }},{% endfor %}")
    U("macro/caller", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ s }}{% endcall %}")
    U("macro/caller_args", "{% macro each(items) %}{% for i in items %}{{ caller(i, loop.index) }}{% endfor %}{% endmacro %}{% call(item, idx) each(['x', 'y']) %}[{{ idx }}:{{ item }}]{% endcall %}")
    U("macro/call_without_caller_use", "{% macro m() %}x{% endmacro %}{% call m() %}y{% endcall %}", error="two values for the special caller argument")
    U("macro/repr_and_tests", "{% macro m() %}{% endmacro %}{{ m }} {{ m is callable }} {{ m.name }}")
    U("macro/not_defined_before", "{{ later is defined }}{% macro later() %}{% endmacro %}{{ later is defined }}")
    U("macro/output_filtered", "{% macro m() %}  padded  {% endmacro %}[{{ m()|trim }}] {{ m()|length }}")
    U("macro/whitespace", "{% macro m(x) %}\n  <{{ x }}>\n{% endmacro %}\n{{ m(1) }}{{ m(2) }}")

    # ---- globals ----
    U("global/range_dict", "{{ range(3)|list }} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }} {{ dict(a=1, b=2) }} {{ dict({'x': 1}, y=2) }} {{ dict([('p', 1)]) }}")
    U("global/range_too_big", "{{ range(100001)|length }}", error="Range too big")
    U("global/strftime_now", "{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%A %B %-d') }}")
    U("global/raise_exception", "{{ raise_exception('Custom failure: roles must alternate') }}", error="Custom failure: roles must alternate")
    U("global/raise_in_branch", "a{% if xs|length > 2 %}{{ raise_exception('too many: ' ~ xs|length) }}{% endif %}", error="too many: 3")

    # ---- runtime errors (message text follows Python's) ----
    U("err/div_zero", "{{ 1 / 0 }}", error="division by zero")
    U("err/floordiv_zero", "{{ 1 // 0 }}", error="integer division or modulo by zero")
    U("err/mod_zero", "{{ 1 % 0 }}", error="integer modulo by zero")
    U("err/str_plus_int", "{{ 'a' + 1 }}", error='can only concatenate str (not "int") to str')
    U("err/int_plus_str", "{{ 1 + 'a' }}", error="unsupported operand type(s) for +: 'int' and 'str'")
    U("err/undefined_plus", "{{ undefined_name + 'a' }}", error="'undefined_name' is undefined")
    U("err/order_mixed", "{{ 'a' < 1 }}", error="'<' not supported between instances of 'str' and 'int'")
    U("err/not_callable", "{{ s() }}", error="'str' object is not callable")
    U("err/call_undefined", "{{ nope() }}", error="'nope' is undefined")
    U("err/unsafe_append", "{{ xs.append(4) }}", error="access to attribute 'append' of 'list' object is unsafe.")
    U("err/unsafe_update", "{{ d.update({}) }}", error="access to attribute 'update' of 'dict' object is unsafe.")
    U("err/iterate_int", "{% for x in n %}{% endfor %}", error="'int' object is not iterable")
    U("err/iterate_none", "{% for x in none_val %}{% endfor %}", error="'NoneType' object is not iterable")
    U("err/len_of_int", "{{ n|length }}", error="has no len()")
    U("err/undefined_int", "{{ undefined_name|int }}", error="'undefined_name' is undefined")
    U("err/in_string_needs_string", "{{ 1 in 'abc' }}", error="'in <string>' requires string as left operand, not int")
    U("err/unhashable", "{{ {[1]: 2} }}", error="unhashable type: 'list'")
    U("err/first_item_attr", "{{ (empty|first).x }}", error="No first item, sequence was empty.")
    U("err/join_non_str", "{{ ', '.join([1, 2]) }}", error="sequence item 0: expected str instance, int found")

    # ---- syntax errors (any error is fine; the message need not match Jinja's) ----
    U("syntax/unclosed_if", "{% if true %}x", error="")
    U("syntax/unknown_tag", "{% frobnicate %}", error="Encountered unknown tag 'frobnicate'")
    U("syntax/stray_endfor", "{% endfor %}", error="Encountered unknown tag 'endfor'")
    U("syntax/unclosed_variable", "{{ x ", error="")
    U("syntax/unclosed_comment", "{# never closed", error="Missing end of comment tag")
    U("syntax/unclosed_string", "{{ 'abc }}", error="")
    U("syntax/bad_operator", "{{ 1 !! 2 }}", error="")
    U("syntax/break_outside_loop", "{% break %}", error="'break' outside loop")
    U("syntax/mismatched_paren", "{{ (1 + 2] }}", error="unexpected ']'")
    U("syntax/empty_expression", "{{ }}", error="")
    U("syntax/chained_is", "{{ 1 is odd is true }}", error="You cannot chain multiple tests with is")
    U("syntax/default_order", "{% macro m(a=1, b) %}{% endmacro %}", error="non-default argument follows default argument")
    U("syntax/assign_to_literal", "{% set 1 = 2 %}", error="")
    U("syntax/unclosed_raw", "{% raw %}abc", error="Missing end of raw directive")
    U("syntax/endif_for_mismatch", "{% for x in xs %}{% endif %}", error="")
    return cases


def operator_matrix_cases():
    """Every operator over a grid of operands: Python's numeric tower, sequence operators and
    their error messages, all compared with Jinja2 (errors must contain Python's message)."""
    import itertools

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment()
    cases = []
    numbers = ["0", "1", "-3", "7", "2.5", "-0.5", "True", "1e300"]
    arith = ["+", "-", "*", "/", "//", "%", "**"]
    for (a, b), op in itertools.product(itertools.product(numbers, numbers), arith):
        expr = f"{a} {op} {b}"
        try:
            result = env.from_string("{{ " + expr + " }}").render()
        except Exception as e:  # noqa: BLE001
            result = None
            error = str(e)
        if result is not None and "j" in result:
            continue  # complex results (negative base, fractional power): not supported
        if op == "**" and a == "1e300" and b not in ("0", "1", "True", "-3", "-0.5"):
            continue  # float overflow: Python raises OverflowError with an errno message
        c = {"name": f"matrix/num/{a} {op} {b}", "template": "{{ " + expr + " }}", "context": {}}
        if result is None:
            c["error"] = error
        cases.append(c)
    operands = ["'ab'", "''", "'é世'", "[1, 2]", "[]", "(1, 'a')", "{'k': 1}", "None", "2", "1.5", "undefined_name"]
    ops = ["+", "*", "~", "==", "!=", "<", ">=", "in", "and", "or"]
    for (a, b), op in itertools.product(itertools.product(operands, operands), ops):
        expr = f"{a} {op} {b}"
        c = {"name": f"matrix/seq/{a} {op} {b}", "template": "{{ " + expr + " }}", "context": {}}
        try:
            env.from_string(c["template"]).render()
        except Exception as e:  # noqa: BLE001
            c["error"] = str(e)
        cases.append(c)
    return cases


def builtin_matrix_cases():
    """Each argument-free filter and test, and common string methods, over a grid of values."""
    import itertools

    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment()
    values = ["'  Mixed Case  '", "'hello-world (x) [y]'", "'ÉCOLE été'", "''", "'a\\nb\\n'", "'42'", "' -7 '", "'3.5'",
              "'1e3'", "0", "-7", "2.5", "True", "None", "[3, 1, 2]", "['b', 'A', 'a']", "[]", "{'b': 1, 'a': 2}",
              "{}", "(1, 2)", "undefined_name", "'<a href=\"x\">&</a>'"]
    filters = ["abs", "capitalize", "count", "escape", "first", "float", "int", "last", "length", "list", "lower",
               "max", "min", "reverse", "sort", "string", "sum", "title", "tojson", "trim", "unique", "upper",
               "wordcount", "items", "dictsort", "join", "center", "indent", "default", "safe"]
    tests = ["defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number", "string",
             "mapping", "iterable", "sequence", "callable", "odd", "even", "lower", "upper"]
    methods = ["upper()", "lower()", "title()", "capitalize()", "strip()", "split()", "splitlines()", "isdigit()",
               "isalpha()", "startswith('h')", "endswith(')')", "replace(' ', '_')", "find('e')", "count('l')"]
    cases = []

    def add(kind, label, template):
        c = {"name": f"matrix/{kind}/{label}", "template": template, "context": {}}
        try:
            out = env.from_string(template).render()
        except Exception as e:  # noqa: BLE001
            c["error"] = str(e)
        else:
            if "object at 0x" in out or "<generator" in out:
                return  # Python iterator reprs: not something to imitate
        cases.append(c)

    for v, f in itertools.product(values, filters):
        add("filter", f"{v}|{f}", "{{ " + v + "|" + f + " }}")
    for v, t in itertools.product(values, tests):
        add("test", f"{v} is {t}", "{{ " + v + " is " + t + " }}")
    for v, m in itertools.product([v for v in values if v.startswith("'")], methods):
        add("method", f"{v}.{m}", "{{ " + v + "." + m + " }}")
    return cases


def whitespace_matrix_cases():
    """Tags with every whitespace-control marker between every kind of surrounding whitespace:
    the lexer's trim_blocks / lstrip_blocks / -,+ rules against Jinja2's."""
    prefixes = ["", " ", "\t ", "\n", "  \n  ", "x\n  ", "\n\n", "\r\n ", "\u3000"]
    suffixes = ["", "\n", " \n", "\n\n", "  x", "\n  "]
    pairs = [("{% if true %}", "{% endif %}"), ("{%- if true -%}", "{%- endif -%}"), ("{%+ if true +%}", "{%+ endif +%}"),
             ("{% if true -%}", "{%- endif %}"), ("{%- if true %}", "{% endif -%}"), ("{% for i in 'ab' %}", "{% endfor %}")]
    singles = ["{# c #}", "{#- c -#}", "{#+ c +#}", "{{ 'v' }}", "{{- 'v' -}}", "{{- 'v' }}", "{% set q = 1 %}",
               "{%- set q = 1 -%}", "{% raw %}r{% endraw %}", "{%- raw -%} r {%- endraw -%}", "{%+ raw %}r{% endraw +%}"]
    cases = []
    for i, p in enumerate(prefixes):
        for j, sfx in enumerate(suffixes):
            for k, (open_tag, close_tag) in enumerate(pairs):
                cases.append({"name": f"ws_matrix/pair{k}/p{i}/s{j}",
                              "template": f"A{p}{open_tag}{sfx}mid{p}{close_tag}{sfx}Z", "context": {}})
            for k, tag in enumerate(singles):
                cases.append({"name": f"ws_matrix/single{k}/p{i}/s{j}", "template": f"A{p}{tag}{sfx}Z", "context": {}})
    return cases


# ---- chat templates ------------------------------------------------------------------------

TOOL_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
TOOL_SEARCH = {
    "type": "function",
    "function": {
        "name": "web_search",
        "description": "Search the web. Returns \"snippets\" — 中文 ok.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top_k": {"type": "integer", "default": 3}},
                       "required": ["query"]},
        "return": {"type": "array", "description": "A list of results."},
    },
}
TOOLS = [TOOL_WEATHER, TOOL_SEARCH]
SCHEMA_TOOL = {
    "type": "function",
    "function": {
        "name": "plan_trip",
        "description": "Exercises every JSON-schema shape gpt-oss renders.",
        "parameters": {
            "type": "object",
            "properties": {
                "cities": {"type": "array", "items": {"type": "string"}, "description": "Cities to visit"},
                "days": {"type": "integer", "default": 3},
                "budget": {"type": "number", "nullable": True},
                "flags": {"type": "array", "items": {"type": "boolean"}},
                "legs": {"type": "array", "items": {"type": "object", "properties": {"from": {"type": "string"},
                                                                                   "to": {"type": "string"}},
                                                      "required": ["from"]}},
                "mode": {"type": "string", "enum": ["train", "plane"], "default": "train"},
                "when": {"oneOf": [{"type": "string", "description": "ISO date"}, {"type": "integer"}]},
                "extra": {"type": ["string", "null"]},
                "meta": {"type": "object"},
                "anything": {},
            },
            "required": ["cities"],
        },
    },
}

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What's the weather like in Paris?"}
A1 = {"role": "assistant", "content": "It is sunny and 22°C in Paris."}
U2 = {"role": "user", "content": "And in Tokyo?"}
A2 = {"role": "assistant", "content": "Rainy, 18°C."}


def tool_call_turns(arguments_as_string, with_ids, content=""):
    def call(name, args, call_id):
        tc = {"type": "function", "function": {"name": name, "arguments": json_dumps(args) if arguments_as_string else args}}
        if with_ids:
            tc["id"] = call_id
        return tc

    assistant = {"role": "assistant", "content": content,
                 "tool_calls": [call("get_current_weather", {"location": "Paris, France", "unit": "celsius"}, "call00001")]}
    tool = {"role": "tool", "content": '{"temperature": 22, "condition": "sunny"}', "name": "get_current_weather"}
    if with_ids:
        tool["tool_call_id"] = "call00001"
    return [assistant, tool]


def json_dumps(x):
    import json
    return json.dumps(x, ensure_ascii=False)


CONVERSATIONS = {
    "single_user": [U1],
    "system_user": [SYS, U1],
    "multi_turn": [SYS, U1, A1, U2],
    "multi_turn_no_system": [U1, A1, U2, A2],
    "ends_with_assistant": [U1, A1],
    "unicode": [{"role": "user", "content": "你好，世界！ Ça va? 😀🎉 Привет"},
                {"role": "assistant", "content": "你好！我很好。 ✨"},
                {"role": "user", "content": "日本語も話せますか？"}],
    "whitespace": [{"role": "system", "content": "  \n padded system \n  "},
                   {"role": "user", "content": "\n  spaced question?  \n"},
                   {"role": "assistant", "content": "  spaced answer  "},
                   {"role": "user", "content": "tabs\tand\nnewlines\n"}],
    "empty_content": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}, {"role": "user", "content": "ok"}],
    "special_chars": [{"role": "user", "content": "Quotes \"double\" and 'single', braces {{ }} {% %}, backslash \\ and <tags>."}],
    "two_users": [U1, U2],
    "starts_with_assistant": [A1, U1],
    "think": [U1, {"role": "assistant", "content": "<think>\nThe user asks about Paris weather.\n</think>\n\nIt is sunny."}, U2],
    "reasoning_content": [U1, {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check the forecast first."}, U2],
    "list_content": [{"role": "system", "content": [{"type": "text", "text": "Structured system."}]},
                     {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image"}, {"type": "text", "text": " this."}]}],
}


def chat_cases(template_files):
    cases = []

    def C(template, conv, add_gen, extra=None, error=None, tokens=None):
        ctx = {"messages": CONVERSATIONS[conv] if isinstance(conv, str) else conv[1], "add_generation_prompt": add_gen}
        ctx.update(TOKENS[template] if tokens is None else tokens)
        ctx.update(extra or {})
        conv_name = conv if isinstance(conv, str) else conv[0]
        suffix = "".join(f"/{k}={v}" for k, v in (extra or {}).items() if k not in ("tools",))
        if extra and "tools" in extra:
            suffix += "/tools"
        name = f"chat/{template}/{conv_name}/gen={str(add_gen).lower()}{suffix}"
        c = {"name": name, "template_file": template + ".jinja", "context": ctx}
        if error is not None:
            c["error"] = error
        cases.append(c)

    basic = ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "unicode", "whitespace",
             "empty_content", "special_chars", "ends_with_assistant"]

    # Qwen3 (third_party): thinking, tools, tool results, enable_thinking.
    for conv in basic + ["think", "reasoning_content", "two_users"]:
        for gen in (True, False):
            C("qwen3", conv, gen)
    for think in (True, False):
        C("qwen3", "multi_turn", True, {"enable_thinking": think})
        C("qwen3", "think", True, {"enable_thinking": think})
    tool_conv = ("tool_round", [SYS, U1] + tool_call_turns(False, False) + [A1])
    tool_conv_str = ("tool_round_string_args", [U1] + tool_call_turns(True, False))
    multi_tool = ("multi_tool_results", [U1, {"role": "assistant", "content": "Checking both.", "tool_calls": [
        {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
        {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Tokyo"}}}]},
        {"role": "tool", "content": "22C"}, {"role": "tool", "content": "18C"}])
    for conv in (tool_conv, tool_conv_str, multi_tool):
        C("qwen3", conv, True, {"tools": TOOLS})
        C("qwen3", conv, False)
    C("qwen3", "system_user", True, {"tools": TOOLS})
    C("qwen3", "single_user", True, {"tools": TOOLS, "enable_thinking": False})

    # Qwen2.5-Instruct: default system prompt, tools.
    for conv in basic + ["two_users"]:
        for gen in (True, False):
            C("qwen2_5_instruct", conv, gen)
    for conv in (tool_conv, tool_conv_str, multi_tool):
        C("qwen2_5_instruct", conv, True, {"tools": TOOLS})
        C("qwen2_5_instruct", conv, False)
    C("qwen2_5_instruct", "system_user", True, {"tools": TOOLS})

    # Llama 3 (third_party llama3_1: the original Meta-Llama-3 template).
    for conv in basic:
        for gen in (True, False):
            C("llama3_1", conv, gen)

    # Llama 3.1 Instruct with tools and the fixed date default; Llama 3.2 with strftime_now.
    for tpl in ("llama3_1_instruct_tools", "llama3_2_instruct"):
        for conv in basic:
            for gen in (True, False):
                C(tpl, conv, gen)
        C(tpl, "system_user", True, {"tools": TOOLS})
        C(tpl, "system_user", True, {"tools": TOOLS, "tools_in_user_message": False})
        C(tpl, ("tool_round", [SYS, U1] + tool_call_turns(False, False)), True, {"tools": TOOLS})
        C(tpl, ("dict_tool_result", [U1, {"role": "tool", "content": {"temp": 22}}]), True)
        C(tpl, "multi_turn", True, {"date_string": "01 Jan 2025"})
        C(tpl, ("only_system", [SYS]), True, {"tools": TOOLS},
          error="Cannot put tools in the first user message when there's no first user message!")
        C(tpl, ("two_tool_calls", [U1, multi_tool[1][1]]), True, error="This model only supports single tool-calls at once!")
    C("llama3_1_instruct_tools", ("builtin_tool_call", [U1, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "brave_search", "arguments": {"query": "weather paris"}}}]}]), True,
      {"builtin_tools": ["brave_search", "wolfram_alpha", "code_interpreter"]})
    C("llama3_1_instruct_tools", "system_user", True, {"builtin_tools": ["code_interpreter", "brave_search"]})

    # Llama 2 chat (no template in third_party/tokenizers/llama2; Meta's from public sources).
    for conv in ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "unicode", "whitespace", "empty_content"]:
        C("llama2_chat", conv, False)
    C("llama2_chat", "two_users", False, error="Conversation roles must alternate user/assistant/user/assistant/...")

    # Mistral-7B-Instruct v0.3 (tool-calling template) and Mixtral-8x7B (v0.1 format).
    mistral_tools_conv = ("tool_round", [U1] + tool_call_turns(False, True))
    for conv in ["single_user", "multi_turn_no_system", "unicode", "whitespace", "ends_with_assistant", "two_users"]:
        C("mistral_7b_instruct_v0_3", conv, False)
    C("mistral_7b_instruct_v0_3", ("tool_question", [U1]), False, {"tools": TOOLS})
    C("mistral_7b_instruct_v0_3", mistral_tools_conv, False, {"tools": TOOLS})
    C("mistral_7b_instruct_v0_3", ("tool_round_then_user", [U1] + tool_call_turns(False, True) + [A1, U2]), False, {"tools": TOOLS})
    for conv in ["single_user", "multi_turn_no_system", "unicode", "ends_with_assistant"]:
        C("mixtral_8x7b_instruct", conv, False)
    C("mixtral_8x7b_instruct", "system_user", False, error="Conversation roles must alternate user/assistant/user/assistant/...")
    C("mixtral_8x7b_instruct", "two_users", False, error="Conversation roles must alternate")

    # Mistral-Nemo-Instruct-2407 (tool call ids must have 9 characters).
    for conv in ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "unicode"]:
        C("mistral_nemo_instruct", conv, False)
    C("mistral_nemo_instruct", mistral_tools_conv, False, {"tools": TOOLS})
    C("mistral_nemo_instruct", ("bad_tool_id", [U1, {"role": "assistant", "tool_calls": [
        {"id": "short", "function": {"name": "f", "arguments": {}}}]}]), False,
      error="Tool call IDs should be alphanumeric strings with length 9!")
    C("mistral_nemo_instruct", "two_users", False, error="conversation roles must alternate")

    # Gemma 2 and Gemma 3 (third_party).
    for conv in ["single_user", "multi_turn_no_system", "unicode", "empty_content", "ends_with_assistant"]:
        for gen in (True, False):
            C("gemma2_it", conv, gen)
    C("gemma2_it", ("whitespace_no_system", CONVERSATIONS["whitespace"][1:]), True)
    C("gemma2_it", "system_user", True, error="System role not supported")
    C("gemma2_it", "starts_with_assistant", True, error="Conversation roles must alternate")
    for conv in ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "unicode", "whitespace",
                 "empty_content", "list_content"]:
        for gen in (True, False):
            C("gemma3", conv, gen)
    C("gemma3", "two_users", True, error="Conversation roles must alternate user/assistant/user/assistant/...")
    C("gemma3", ("non_string_content", [{"role": "user", "content": 42}]), True, error="Invalid content type")

    # DeepSeek-V3 (third_party) and DeepSeek-R1.
    ds_tools = ("tool_round", [SYS, U1] + tool_call_turns(True, False, None) + [A1, U2])
    ds_two_calls = ("two_tool_calls", [U1, {"role": "assistant", "content": None, "tool_calls": [
        {"type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"type": "function", "function": {"name": "b", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "content": "ra"}, {"role": "tool", "content": "rb"}])
    for tpl in ("deepseek_v3", "deepseek_r1"):
        for conv in basic + ["think", "two_users"]:
            for gen in (True, False):
                C(tpl, conv, gen)
        C(tpl, ds_tools, True)
        C(tpl, ds_two_calls, True)
        C(tpl, ds_two_calls, False)
        C(tpl, ("multi_system", [SYS, {"role": "system", "content": "Be brief."}, U1]), True)
        C(tpl, ("dict_arguments", [U1] + tool_call_turns(False, False, None)), True, error="can only concatenate str")
    C("deepseek_r1", ("tool_call_with_content", [U1, {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Paris\"}"}}]},
        {"role": "tool", "content": "sunny"}]), True)

    # Yi-34B-Chat (ChatML without a generation prompt switch) and Phi-3-mini.
    for conv in ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "unicode", "whitespace"]:
        C("yi_34b_chat", conv, True)
    for tpl in ("phi3_mini_instruct", "phi3_mini_generation"):
        for conv in ["single_user", "system_user", "multi_turn", "unicode", "whitespace", "ends_with_assistant"]:
            for gen in (True, False):
                C(tpl, conv, gen)

    # gpt-oss (macros rendering JSON schemas as TypeScript, namespaces, kwargs like reasoning_effort).
    for conv in ["single_user", "system_user", "multi_turn", "unicode", "ends_with_assistant"]:
        for gen in (True, False):
            C("gpt_oss", conv, gen)
    oss_tools = ("tool_round", [SYS, U1, {"role": "assistant", "thinking": "Need the weather tool.", "tool_calls": [
        {"type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}]},
        {"role": "tool", "content": "{\"temp\": 22}"}, {"role": "assistant", "content": "Sunny, 22C."}, U2])
    C("gpt_oss", oss_tools, True, {"tools": TOOLS})
    C("gpt_oss", oss_tools, True, {"tools": TOOLS, "reasoning_effort": "high", "builtin_tools": ["browser", "python"]})
    C("gpt_oss", ("thinking_last", [U1, {"role": "assistant", "thinking": "Think first.", "content": "Answer."}]), False,
      {"model_identity": "You are a test model."})
    C("gpt_oss", ("schema_types", [U1]), True, {"tools": [SCHEMA_TOOL]})
    C("gpt_oss", ("orphan_tool", [U1, {"role": "tool", "content": "x"}]), True,
      error="Message has tool role, but there was no previous assistant message with a tool call!")
    C("gpt_oss", ("channel_tags", [U1, {"role": "assistant", "content": "<|channel|>final<|message|>hi"}]), True,
      error="You have passed a message containing <|channel|> tags in the content field.")

    known = {c["template_file"] for c in cases}
    missing = [t for t in template_files if t not in known]
    if missing:
        raise SystemExit(f"templates without cases: {missing}")
    return cases


TOKENS = {
    "qwen3": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
    "qwen2_5_instruct": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
    "llama3_1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3_1_instruct_tools": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3_2_instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama2_chat": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral_7b_instruct_v0_3": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mixtral_8x7b_instruct": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "mistral_nemo_instruct": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    "gemma2_it": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<end_of_turn>", "pad_token": "<pad>", "unk_token": "<unk>"},
    "deepseek_v3": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                    "pad_token": "<｜end▁of▁sentence｜>", "unk_token": None},
    "deepseek_r1": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                    "pad_token": "<｜end▁of▁sentence｜>", "unk_token": None},
    "yi_34b_chat": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"},
    "phi3_mini_instruct": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
    "gpt_oss": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"},
    "phi3_mini_generation": {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"},
}
