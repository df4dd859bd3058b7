// Defines no function of the target.
long not_in_any_target(long x) { return x; }
