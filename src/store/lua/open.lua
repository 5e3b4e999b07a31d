-- Opens a session for a fresh QR code, held by a stream.
-- KEYS[1] the session; ARGV: qr, audience, deadline ms, expiry ms, holder, expire-at ms,
-- the digest of the stream's key.
redis.call('HSET', KEYS[1], 'st', 'w', 'qr', ARGV[1], 'aud', ARGV[2], 'dl', ARGV[3],
  'ex', ARGV[4], 'h', ARGV[5], 'kd', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return 1
