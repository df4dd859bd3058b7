-- String-heavy work: gsub with patterns and functions, format, concatenation, table.concat.
local rounds = tonumber(arg and arg[1]) or 150

local words = {}
for i = 1, 64 do
  words[i] = string.format("w%03d_%s", i, string.rep(string.char(97 + i % 26), i % 7 + 1))
end

local checksum = 0
local function mix(s)
  for i = 1, #s, 7 do checksum = (checksum * 31 + s:byte(i)) % 2147483647 end
end

local total_subs = 0
for r = 1, rounds do
  local parts = {}
  for i = 1, 16 do
    local w = words[(r * 7 + i) % #words + 1]
    parts[#parts + 1] = string.format("%s=%d:%5.2f", w, r * i, (r % 97) / (i + 1))
  end
  local line = table.concat(parts, ",")
  local up, n1 = line:gsub("(%a+)(%d+)", function(a, d) return a:upper() .. "#" .. d end)
  local swapped, n2 = up:gsub("(%w+)=(%w+)", "%2<-%1")
  local s = ""
  for i = 1, 8 do s = s .. parts[i]:sub(1, 5) .. "|" end
  total_subs = total_subs + n1 + n2
  mix(swapped)
  mix(s)
  if r % (rounds // 4) == 0 then
    print(string.format("round %d: %d bytes, %s", r, #swapped, swapped:sub(1, 40)))
  end
end

local keys = {}
for k in ("alpha beta gamma delta epsilon zeta eta theta"):gmatch("%a+") do keys[#keys + 1] = k:reverse() end
table.sort(keys)
print("keys: " .. table.concat(keys, " "))
print(string.format("substitutions %d, checksum %d", total_subs, checksum))
