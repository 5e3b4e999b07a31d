-- Releases a lock if this instance holds it. KEYS[1] the lock; ARGV: this instance.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
