/*
 * commands.h - the kiln CLI's commands. main.c dispatches `kiln COMMAND ...`
 * to kiln_cmd_COMMAND(argc, argv) with argv[0] = COMMAND. Each returns the
 * process exit status (0 ok, 1 failure, 2 usage error).
 */
#ifndef KILN_CLI_COMMANDS_H
#define KILN_CLI_COMMANDS_H

int kiln_cmd_info(int argc, char **argv);    /* cmd_info.c */
int kiln_cmd_train(int argc, char **argv);   /* cmd_train.c: train MODEL */
int kiln_cmd_eval(int argc, char **argv);    /* cmd_train.c: eval MODEL --load FILE */
int kiln_cmd_fetch(int argc, char **argv);   /* cmd_fetch.c: fetch mnist|shakespeare */
int kiln_cmd_bench(int argc, char **argv);   /* cmd_bench.c: sgemm, CNN convs, train steps */
int kiln_cmd_conform(int argc, char **argv); /* cmd_conform.c: conform PLUGIN */
int kiln_cmd_plan(int argc, char **argv);    /* cmd_plan.c: plan [MODEL] */

int kiln_cmd_train_char(int argc, char **argv); /* cmd_char.c: train char-lstm|char-gru */
int kiln_cmd_sample(int argc, char **argv);  /* cmd_sample.c: sample --load FILE */
int kiln_cmd_train_gpt(int argc, char **argv); /* cmd_gpt.c: train char-gpt */

#endif
