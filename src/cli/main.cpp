#include <iostream>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"Apus: LLM inference and serving"};
  app.require_subcommand(1);
  apus::cli::add_generate(app);
  apus::cli::add_bench(app);
  apus::cli::add_tokenize(app);
  apus::cli::add_infer(app);
  apus::cli::add_deploy(app);
  apus::cli::add_app_ui(app);
  apus::cli::add_client(app);
  apus::cli::add_export(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
