// The web chat page (src/server/ui/), embedded in the binary at build time by
// cmake/embed_files.cmake: `apus app-ui` and `apus deploy --ui` serve it next to the API it uses.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

#include "server/http_server.h"

namespace apus::server {

struct EmbeddedFile {
  const char* name;        // the file's name in src/server/ui, e.g. "app.js"
  std::string_view bytes;  // its contents
};
extern const EmbeddedFile kWebUiFiles[];  // generated: web_ui_files.cpp in the build folder
extern const size_t kWebUiFileCount;

// GET / (and /index.html): the page; GET /ui/NAME: the file NAME it loads. nullopt for any other
// request. The page holds no secrets, so it needs no API key (the API calls it makes do).
std::optional<HttpResponse> web_ui_response(const HttpRequest& request);

}  // namespace apus::server
