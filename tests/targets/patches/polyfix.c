// A live patch of libflav.so's lib_poly (the dlopen/dlclose tests): lib_poly(3) returns 1003.
long lib_poly(long x)
{
    return 1000 + x;
}
