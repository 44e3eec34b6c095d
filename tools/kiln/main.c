/*
 * main.c - `kiln COMMAND [args]`: global options and dispatch to the
 * kiln_cmd_* functions of commands.h, one file per command.
 */
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "kiln/kiln.h"

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command;

static const command commands[] = {
    {"info", kiln_cmd_info, "list the backend plugins, their devices, and why any were refused"},
    {"train", kiln_cmd_train, "train a model (mnist-cnn, char-lstm, char-gru, char-gpt)"},
    {"eval", kiln_cmd_eval, "evaluate a saved checkpoint on the test set"},
    {"fetch", kiln_cmd_fetch, "download a dataset (mnist, shakespeare) into the data directory"},
    {"plan", kiln_cmd_plan, "show how a training step runs on a device (segments, CPU fallback, memory)"},
    {"conform", kiln_cmd_conform, "check a backend plugin file against the ABI and the CPU reference"},
    {"sample", kiln_cmd_sample, "generate text from a char-lstm/char-gru/char-gpt checkpoint"},
    {"bench", kiln_cmd_bench, "measure sgemm, the CNN's convolutions and training steps"},
};

static void usage(FILE *f) {
  fprintf(f,
          "usage: kiln COMMAND [options]\n"
          "       kiln --version | --help\n"
          "\n"
          "Trains neural networks on the CPU or any GPU through backend plugins.\n"
          "\n"
          "commands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "  help     show this help\n"
          "\n"
          "examples:\n"
          "  kiln info                       which backends and devices are available\n"
          "  kiln fetch mnist                download MNIST (about 11 MB)\n"
          "  kiln train mnist-cnn --epochs 1 --save cnn.safetensors\n"
          "                                  train the reference CNN on the best device\n"
          "  kiln eval mnist-cnn --load cnn.safetensors\n"
          "                                  its accuracy on the MNIST test set\n"
          "\n"
          "Run `kiln COMMAND --help` for a command's options. Plugins are searched in\n"
          "$KILN_PLUGIN_PATH, then beside libkiln; $KILN_LOG_LEVEL (error, warning,\n"
          "info, debug) sets how much plugins log.\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V") || !strcmp(cmd, "version")) {
    printf("kiln %s (plugin ABI %u.%u)\n", kiln_version_string(), KILN_PLUGIN_ABI_MAJOR,
           KILN_PLUGIN_ABI_MINOR);
    return 0;
  }
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    /* `kiln help COMMAND` is `kiln COMMAND --help`. */
    if (argc >= 3 && strcmp(cmd, "help") == 0) {
      for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[2], commands[i].name)) {
          char *sub[] = {argv[2], "--help", NULL};
          return commands[i].run(2, sub);
        }
      fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[2]);
      usage(stderr);
      return 2;
    }
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
    if (!strcmp(cmd, commands[i].name)) return commands[i].run(argc - 1, argv + 1);

  if (cmd[0] == '-')
    fprintf(stderr, "kiln: unknown option '%s'\n\n", cmd);
  else
    fprintf(stderr, "kiln: unknown command '%s'\n\n", cmd);
  usage(stderr);
  return 2;
}
