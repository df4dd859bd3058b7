#!/usr/bin/env bash
# Writes a C program with N (default 50000) traceable functions f0..f(N-1) to stdout.
# Once running it prints "ready PID" and two threads call every function in turn, forever,
# counting rounds in `rounds` (no threads with the argument "idle"); it exits when stdin closes.
set -euo pipefail
n=${1:-50000}
awk -v n="$n" 'BEGIN {
  print "#include <pthread.h>\n#include <stdio.h>\n#include <unistd.h>\nvolatile long many_sink;\nvolatile long rounds;";
  for (i = 0; i < n; i++) printf "__attribute__((noipa)) void f%d(void) { many_sink += %d; }\n", i, i;
  print "typedef void (*fn_t)(void);\nstatic fn_t table[] = {";
  for (i = 0; i < n; i++) printf "f%d,\n", i;
  print "};";
  print "static void *spin(void *arg) {\n  (void)arg;\n  for (;;) {\n    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++) table[i]();\n    __atomic_fetch_add(&rounds, 1, __ATOMIC_RELAXED);\n  }\n  return NULL;\n}";
  print "int main(int argc, char **argv) {\n  pthread_t t[2];\n  if (argc < 2 || argv[1][0] != 0x69)\n    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, spin, NULL);\n  printf(\"ready %d\\n\", getpid()); fflush(stdout);\n  char buf[64];\n  while (read(0, buf, sizeof buf) > 0) {}\n  return 0;\n}";
}'
