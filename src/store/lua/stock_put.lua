-- Adds a code made under a reservation and ends the reservation. The stock expires with its
-- newest code (all codes have the same life).
-- KEYS[1] the stock, KEYS[2] the reservations; ARGV: the code, its scene, its expiry ms.
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
