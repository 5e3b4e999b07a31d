-- A reconnecting stream names its session and proves it is its stream with the digest of the
-- stream's key: attach it while the session waits (telling the instance of the replaced
-- stream, if another), or hand it the result it has not seen. A wrong key changes nothing.
-- KEYS[1] the session; ARGV: holder, has_result (1/0), now ms, grace ms, inbox prefix,
-- this instance, scene, key digest, '1' when the caller tells the replaced stream's instance (a
-- Redis Cluster, where a script may not publish on a channel of another slot).
local s = redis.call('HMGET', KEYS[1], 'st', 'dl', 'ex', 'h', 'qr', 'aud', 'r', 'k', 'kd')
if not s[1] or s[9] ~= ARGV[8] then return false end
local now = tonumber(ARGV[3])
if s[1] == 'w' and now < tonumber(s[2]) then
  local old = s[4] or ''
  redis.call('HSET', KEYS[1], 'h', ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(s[2]) + tonumber(ARGV[4])))
  if old ~= '' and old ~= ARGV[1] then
    local inst, gen = string.match(old, '^(.*)/(%d+)$')
    if inst and inst ~= ARGV[6] and ARGV[9] ~= '1' then
      redis.call('PUBLISH', ARGV[5] .. '{' .. inst .. '}', cjson.encode({k = 'x', s = ARGV[7], g = gen}))
    end
  end
  return {'w', s[5], s[6] or '', s[2], s[3], s[9], old}
end
if s[1] == 'd' and ARGV[2] == '0' and now < tonumber(s[8] or s[3]) then
  return {'d', s[5], s[6] or '', s[2], s[3], s[9], s[7] or ''}
end
return false
