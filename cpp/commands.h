// dll_infer's subcommands on models written by `dll-ext export`.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace dll_infer {

// A subcommand's arguments: positional ones in order, and --name value options.
struct CommandLine {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
};

// argv[first..] split into positional arguments and the options `valued` names (each taking a
// value); UsageError for any other option or a missing value.
CommandLine parse_command_line(int argc, char** argv, int first, const std::vector<std::string>& valued);

// Each runs one subcommand, printing its result on stdout; UsageError for bad arguments,
// std::runtime_error for anything else.
void classify_command(const CommandLine& args);  // MODEL IMAGE [--top K]
// MODEL --prompt TEXT [--length N] [--temperature T] [--top-k K] [--seed S]
void generate_command(const CommandLine& args);
void answer_command(const CommandLine& args);    // MODEL QUESTION [--beam K [--nbest N] [--length-penalty A]]
void nback_command(const CommandLine& args);     // MODEL SYMBOL...

}  // namespace dll_infer
