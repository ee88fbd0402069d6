// The web page's Markdown renderer (src/server/ui/markdown.js), in node: the trees it builds,
// written out as HTML here (text escaped) to compare. tests/test_ui.cpp runs it.
import assert from 'node:assert/strict';
import { parseMarkdown, parseInline, safeHref } from '../../src/server/ui/markdown.js';

const esc = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
function html(nodes) {
  return nodes.map((n) => {
    if (n.tag === '#text') return esc(n.text);
    const attrs = (n.href ? ` href="${esc(n.href)}"` : '') + (n.lang ? ` lang="${esc(n.lang)}"` : '') +
                  (n.start !== undefined ? ` start="${n.start}"` : '') + (n.done === false ? ' open' : '');
    if (n.tag === 'br' || n.tag === 'hr') return `<${n.tag}>`;
    return `<${n.tag}${attrs}>${html(n.children)}</${n.tag}>`;
  }).join('');
}
const md = (s) => html(parseMarkdown(s));
const inline = (s) => html(parseInline(s));
let checks = 0;
function eq(got, want, what) {
  assert.equal(got, want, what);
  checks++;
}

// Markup in the text stays text: the tree has no node for it, whatever it is.
eq(md('<script>alert(1)</script>'), '<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>', 'script tag');
eq(md('<img src=x onerror=alert(1)> & "q"'), '<p>&lt;img src=x onerror=alert(1)&gt; &amp; &quot;q&quot;</p>', 'img tag');
eq(md('**<b>x</b>**'), '<p><strong>&lt;b&gt;x&lt;/b&gt;</strong></p>', 'markup inside emphasis');
eq(md('```html\n<script>x</script>\n```'), '<pre lang="html">&lt;script&gt;x&lt;/script&gt;</pre>', 'markup in code');
// Links: http(s) and mailto only; anything else keeps its text and gets no href.
eq(inline('[a](https://example.com/x?y=1)'), '<a href="https://example.com/x?y=1">a</a>', 'link');
eq(inline('[a](javascript:alert(1))'), '<span>a</span>)', 'javascript: link');
eq(inline('[a](JaVaScRiPt:alert`1`)'), '<span>a</span>', 'javascript: link, mixed case');
eq(inline('[a](data:text/html,<script>)'), '<span>a</span>', 'data: link');
eq(inline('![cat](http://x/cat.png)'), '<a href="http://x/cat.png">cat</a>', 'images are links, loading nothing');
eq(inline('<https://apus.dev>'), '<a href="https://apus.dev">https://apus.dev</a>', 'autolink');
eq(String(safeHref(' mailto:a@b.c ')), 'mailto:a@b.c', 'mailto');
eq(String(safeHref('/relative')), 'null', 'relative');
// Inline.
eq(inline('a **b** *c* __d__ _e_ ~~f~~ `g`'),
   'a <strong>b</strong> <em>c</em> <strong>d</strong> <em>e</em> <del>f</del> <code>g</code>', 'emphasis and code');
eq(inline('snake_case_name and 2 * 3 * 4'), 'snake_case_name and 2 * 3 * 4', 'no emphasis inside words or around spaces');
eq(inline('`a **b**` **c `d`**'), '<code>a **b**</code> <strong>c <code>d</code></strong>', 'code spans are literal');
eq(inline('``a ` b``'), '<code>a ` b</code>', 'double backticks');
eq(inline('\\*not em\\*'), '*not em*', 'escapes');
eq(inline('unclosed **bold and `code'), 'unclosed **bold and `code', 'unclosed (as while streaming)');
// Blocks.
eq(md('# Title\n\ntext\nmore'), '<h1>Title</h1><p>text<br>more</p>', 'heading, paragraph with a line break');
eq(md('### T ###'), '<h3>T</h3>', 'closed heading');
eq(md('- a\n- **b**\n\n1. x\n2. y'), '<ul><li>a</li><li><strong>b</strong></li></ul><ol><li>x</li><li>y</li></ol>', 'lists');
eq(md('3. c\n4. d'), '<ol start="3"><li>c</li><li>d</li></ol>', 'ordered list start');
eq(md('- a\n  - b\n  - c\n- d'), '<ul><li>a<ul><li>b</li><li>c</li></ul></li><li>d</li></ul>', 'nested list');
eq(md('- a\n\n- b'), '<ul><li>a</li><li>b</li></ul>', 'loose list');
eq(md('1. step\n   ```sh\n   make\n   ```'), '<ol><li>step<pre lang="sh">make</pre></li></ol>', 'code in a list item');
eq(md('> quoted\n> more\n\nafter'), '<blockquote><p>quoted<br>more</p></blockquote><p>after</p>', 'block quote');
eq(md('a\n\n---\n\nb'), '<p>a</p><hr><p>b</p>', 'rule');
eq(md('```\nx = 1\n\ny = 2\n```\nafter'), '<pre>x = 1\n\ny = 2</pre><p>after</p>', 'fence keeps blank lines');
eq(md('````md\n```\ninner\n```\n````'), '<pre lang="md">```\ninner\n```</pre>', 'longer fence');
eq(md('text\n```py\nprint(1)'), '<p>text</p><pre lang="py">print(1)</pre>', 'unclosed fence (streaming)');
eq(md('| a | b |\n|---|:-:|\n| 1 | **2** |\n| 3 |'),
   '<table><thead><tr><th>a</th><th>b</th></tr></thead><tbody><tr><td>1</td><td><strong>2</strong></td></tr>' +
   '<tr><td>3</td><td></td></tr></tbody></table>', 'table');
eq(md('a | b'), '<p>a | b</p>', 'a pipe is not a table');
eq(md('<think>\nhmm\n</think>\n\nAnswer'), '<think>hmm</think><p>Answer</p>', 'reasoning');
eq(md('<think>still thinking'), '<think open>still thinking</think>', 'reasoning in progress');
eq(md('line\r\nnext'), '<p>line<br>next</p>', 'CRLF');
eq(md(''), '', 'empty');
// Every parse terminates on odd input (a loop here would hang the test, which the C++ side bounds).
for (const s of ['*', '**', '`', '[', '[]', '[](', '](x)', '- ', '1.', '|', '|-|', '>', '```', '~~~', '#', '\\', '_a_b_', '* * *x']) {
  parseMarkdown(s);
  parseMarkdown(s + '\n' + s);
  checks++;
}
console.log(`${checks} checks passed`);
