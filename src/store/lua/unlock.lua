-- Deletes a key only while it holds the value given: a lock this instance holds, a login code
-- that still names its scene. KEYS[1] the key; ARGV: the value. Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
