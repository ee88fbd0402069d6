#include "server/web_ui.h"

#include <string>

namespace apus::server {

namespace {

std::string_view content_type(std::string_view name) {
  auto ends = [&](std::string_view ext) { return name.size() >= ext.size() && name.substr(name.size() - ext.size()) == ext; };
  if (ends(".html")) return "text/html; charset=utf-8";
  if (ends(".js")) return "text/javascript; charset=utf-8";
  if (ends(".css")) return "text/css; charset=utf-8";
  return "application/octet-stream";
}

}  // namespace

std::optional<HttpResponse> web_ui_response(const HttpRequest& req) {
  if (req.method != "GET") return std::nullopt;
  std::string_view name;
  if (req.path == "/" || req.path == "/index.html") name = "index.html";
  else if (req.path.rfind("/ui/", 0) == 0) name = std::string_view(req.path).substr(4);
  else return std::nullopt;
  for (size_t i = 0; i < kWebUiFileCount; ++i) {
    const EmbeddedFile& f = kWebUiFiles[i];
    if (name != f.name) continue;
    HttpResponse r{200, std::string(content_type(name)), std::string(f.bytes), {}};
    // Scripts and styles from this server only, and no inline ones: were model text ever to reach
    // the page as markup, the browser would still run none of it.
    r.headers = {{"Content-Security-Policy",
                  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
                  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
                 {"X-Content-Type-Options", "nosniff"},
                 {"Referrer-Policy", "no-referrer"},
                 {"Cache-Control", "no-cache"}};
    return r;
  }
  return std::nullopt;
}

}  // namespace apus::server
