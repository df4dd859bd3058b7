#!/usr/bin/env bash
# Writes a C program with N (default 50000) traceable functions to stdout.
# Each function fN calls nothing; main calls all of them once per line read from stdin.
set -euo pipefail
n=${1:-50000}
awk -v n="$n" 'BEGIN {
  print "#include <stdio.h>\n#include <unistd.h>\nvolatile long many_sink;";
  for (i = 0; i < n; i++) printf "__attribute__((noipa)) void f%d(void) { many_sink += %d; }\n", i, i;
  print "typedef void (*fn_t)(void);\nstatic fn_t table[] = {";
  for (i = 0; i < n; i++) printf "f%d,\n", i;
  print "};\nint main(void) {\n  printf(\"ready %d\\n\", getpid()); fflush(stdout);\n  char buf[64];\n  while (read(0, buf, sizeof buf) > 0)\n    for (unsigned i = 0; i < sizeof table / sizeof table[0]; i++) table[i]();\n  return 0;\n}";
}'
