#include "quant/calibration.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/jsonl.h"
#include "core/random.h"
#include "text/tokenizer/tokenizer.h"

namespace apus {

namespace {

// Original text written for Apus (no third-party corpus), a few paragraphs per language and style.
constexpr const char* kBuiltinTexts[] = {
    R"(The river town woke slowly. Fishermen pulled their boats onto the gravel, the baker opened the shutters, and a
cold wind carried the smell of bread across the square. Nobody remembered when the bridge had been built, only that
every spring the water rose until it touched the third stone from the top, and every autumn it fell again.
Children counted the stones on their way to school; the old men counted them on their way to the café.)",
    R"(Photosynthesis converts light energy into chemical energy. In the chloroplast, water molecules are split, oxygen
is released, and the energy is stored in ATP and NADPH. The Calvin cycle then fixes carbon dioxide into sugars. A
single mature tree can take up more than twenty kilograms of carbon dioxide per year, depending on its species,
age and climate.)",
    R"(Q: How do I reverse a linked list in place?
A: Keep three pointers. Walk the list once; at each node, point its `next` at the previous node, then advance.
When the walk ends, the previous pointer is the new head. The algorithm runs in O(n) time and O(1) extra space.)",
    R"(def moving_average(values, window):
    """Return the simple moving average of `values` over `window` items."""
    if window <= 0:
        raise ValueError("window must be positive")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out)",
    R"(#include <stdio.h>
int main(void) {
  unsigned long long a = 0, b = 1;
  for (int i = 0; i < 50; ++i) { unsigned long long t = a + b; a = b; b = t; }
  printf("%llu\n", a);  /* 12586269025 */
  return 0;
})",
    R"(春天来了，山上的雪慢慢融化，小河里的水也变得清澈起来。村子里的人们开始在田里播种，孩子们在路边放风筝。
奶奶说，今年的雨水会很多，庄稼一定会有好收成。晚上，一家人围坐在桌旁，一边吃饭一边聊着城里的新闻。)",
    R"(机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不需要人为地编写每一条规则。常见的方法包括
监督学习、无监督学习和强化学习。模型训练完成后，还需要在新的数据上进行评估，以检查它的泛化能力。)",
    R"(Le marché du samedi commence tôt. Les producteurs installent leurs étals de fromages, de pommes et de légumes
d'hiver, tandis que les premiers clients comparent les prix en bavardant. À midi, tout le monde se retrouve à la
terrasse du café pour parler du temps qu'il fera demain.)",
    R"(Die Bibliothek der Stadt wurde im Jahr 1897 eröffnet und besitzt heute mehr als zweihunderttausend Bücher.
Besonders beliebt ist der Lesesaal im obersten Stockwerk, von dem aus man über die Dächer bis zum Fluss sehen kann.
Studierende arbeiten dort oft bis spät in den Abend.)",
    R"(La receta es sencilla: se cortan las patatas en rodajas finas, se fríen a fuego lento con la cebolla y después
se mezclan con los huevos batidos. La tortilla se cuaja por un lado, se le da la vuelta con un plato y se sirve
templada, a veces con un poco de pan.)",
    R"(Вечером на вокзале было шумно: люди спешили к поездам, продавцы предлагали горячий чай и пирожки, а
по громкой связи объявляли отправление. Мы сели в вагон, поставили чемоданы на полку и смотрели, как за окном
медленно исчезают огни города.)",
    R"(駅前の小さな本屋は、朝九時に店を開けます。店主は毎朝、新しく届いた雑誌を棚に並べ、常連のお客さんと
天気の話をします。雨の日には、傘立てがすぐにいっぱいになります。)",
    R"(يبدأ اليوم في القرية مع شروق الشمس، حيث يخرج المزارعون إلى الحقول ويذهب الأطفال إلى المدرسة. وفي المساء
تجتمع العائلات لتناول العشاء والحديث عن أحداث اليوم.)",
    R"(Quarterly report, units in thousands: revenue 4,812 (+7.4%), operating costs 3,905 (+3.1%), operating margin
18.9%. Inventory turned 6.2 times; 312 new customers, churn 2.8%. Forecast for Q3: revenue between 5,000 and 5,250.
The integral of x^2 from 0 to 3 is 9; the roots of x^2 - 5x + 6 = 0 are 2 and 3; 17 * 23 = 391.)",
    R"({"id": 1042, "name": "sensor-7", "readings": [21.4, 21.9, 22.3, 22.1], "unit": "celsius", "ok": true}
<table><tr><th>City</th><th>Population</th></tr><tr><td>Lyon</td><td>522,000</td></tr></table>)",
};

const std::string* string_field(const nlohmann::ordered_json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  APUS_CHECK(it->is_string(), "{}: \"{}\" must be a string", where, key);
  return it->get_ptr<const std::string*>();
}

}  // namespace

std::vector<std::string> builtin_calibration_texts() { return {std::begin(kBuiltinTexts), std::end(kBuiltinTexts)}; }

std::vector<std::string> read_calibration_jsonl(const std::string& file) {
  std::vector<std::string> texts;
  for_each_jsonl_object(file, "--dataset", "with \"text\" or \"query\"/\"response\"",
                        [&](const nlohmann::ordered_json& j, const std::string& where) {
    std::string text;
    if (const std::string* t = string_field(j, "text", where)) {
      text = *t;
    } else {
      auto add = [&](const std::string& s) { text += (text.empty() ? "" : "\n") + s; };
      if (const std::string* s = string_field(j, "system", where)) add(*s);
      for (const auto& [q, r] : jsonl_history(j.value("history", nlohmann::ordered_json()), where)) add(q), add(r);
      const std::string* q = string_field(j, "query", where);
      APUS_CHECK(q != nullptr, "{}: a calibration sample needs a \"text\" or a \"query\" string", where);
      add(*q);
      if (const std::string* r = string_field(j, "response", where)) add(*r);
    }
    if (!text.empty()) texts.push_back(std::move(text));
  });
  APUS_CHECK(!texts.empty(), "--dataset: {} holds no text", file);
  return texts;
}

std::vector<std::vector<int32_t>> calibration_samples(const Tokenizer& tokenizer, const std::vector<std::string>& texts,
                                                      int n_samples, int seqlen, uint64_t seed) {
  APUS_CHECK(n_samples > 0 && seqlen > 0, "calibration: --quant_n_samples and --quant_seqlen must be positive");
  std::vector<int32_t> all;
  for (const std::string& t : texts) {
    const std::vector<int32_t> ids = tokenizer.encode(t, false);
    if (!all.empty() && tokenizer.eos_id()) all.push_back(*tokenizer.eos_id());
    all.insert(all.end(), ids.begin(), ids.end());
  }
  std::vector<std::vector<int32_t>> out;
  const size_t len = size_t(seqlen);
  if (all.size() >= size_t(n_samples) * len) {
    const uint64_t key = splitmix64(seed ^ 0x6770747163616cull);
    for (int s = 0; s < n_samples; ++s) {
      const size_t start = size_t(splitmix64(key + uint64_t(s)) % uint64_t(all.size() - len + 1));
      out.emplace_back(all.begin() + ptrdiff_t(start), all.begin() + ptrdiff_t(start + len));
    }
    return out;
  }
  for (size_t at = 0; at < all.size() && out.size() < size_t(n_samples); at += len) {
    const size_t n = std::min(len, all.size() - at);
    if (n < 16 && !out.empty()) break;
    out.emplace_back(all.begin() + ptrdiff_t(at), all.begin() + ptrdiff_t(at + n));
  }
  APUS_CHECK(!out.empty(), "calibration: the texts hold no tokens");
  return out;
}

}  // namespace apus
