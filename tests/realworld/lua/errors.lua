-- Errors raised and caught through pcall (Lua unwinds with longjmp: luaD_throw never returns).
-- Prints how many errors were raised, so the count of luaD_throw calls is known in advance.
local rounds = tonumber(arg and arg[1]) or 2000

local raised = 0
local function deep(n, kind)
  if n == 0 then
    raised = raised + 1
    if kind == 0 then error("plain error")
    elseif kind == 1 then error({code = 42})
    elseif kind == 2 then local t = nil; return t.field       -- runtime error: index a nil value
    else return ("x"):rep(3) + {}                              -- arithmetic on a table
    end
  end
  return deep(n - 1, kind) + 1
end

local caught, byKind = 0, {0, 0, 0, 0}
for r = 1, rounds do
  local kind = r % 4
  local ok, err = pcall(deep, r % 13, kind)
  if not ok then
    caught = caught + 1
    byKind[kind + 1] = byKind[kind + 1] + 1
    if kind == 1 then assert(type(err) == "table" and err.code == 42) end
  end
  -- a nested pcall: the inner error is caught inside, the outer call returns normally
  local ok2, v = pcall(function()
    local ok3 = pcall(deep, 3, 0)
    assert(not ok3)
    return r
  end)
  assert(ok2 and v == r)
  caught = caught + 1
end

-- error() with a message handler (xpcall) and a traceback
local ok, msg = xpcall(deep, function(m) return "handled: " .. tostring(m):gsub("^.-:%d+: ", "") end, 5, 0)
assert(not ok)
print(msg)
caught = caught + 1

print(string.format("raised %d, caught %d (kinds %d/%d/%d/%d)", raised, caught, byKind[1], byKind[2], byKind[3], byKind[4]))
