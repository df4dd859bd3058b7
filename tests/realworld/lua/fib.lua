-- Recursive Fibonacci: many small Lua calls (luaD_precall, luaV_execute's call path).
local n = tonumber(arg and arg[1]) or 25

local function fib(k)
  if k < 2 then return k end
  return fib(k - 1) + fib(k - 2)
end

local calls = 0
local function counted(k)
  calls = calls + 1
  if k < 2 then return k end
  return counted(k - 1) + counted(k - 2)
end

print(string.format("fib(%d) = %d", n, fib(n)))
print(string.format("fib(%d) again = %d in %d calls", n - 2, counted(n - 2), calls))
