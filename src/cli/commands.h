// Each subcommand registers itself on the root app.
#pragma once
#include <CLI/CLI.hpp>

namespace apus::cli {

void add_generate(CLI::App& root);
void add_bench(CLI::App& root);
void add_tokenize(CLI::App& root);
void add_infer(CLI::App& root);
void add_deploy(CLI::App& root);
void add_app_ui(CLI::App& root);
void add_client(CLI::App& root);
void add_export(CLI::App& root);

}  // namespace apus::cli
