// References a symbol no process has.
long no_such_symbol_anywhere(long);

long f(long x) { return no_such_symbol_anywhere(x); }
