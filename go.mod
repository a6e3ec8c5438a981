module helyos

go 1.26.0

require golang.org/x/crypto v0.59.0

// Not ours: x/crypto's argon2 and blake2b import golang.org/x/sys/cpu to pick
// their SIMD code, and Go records a dependency's dependency here. helyos
// imports nothing from it; without this line the build refuses to run.
require golang.org/x/sys v0.50.0 // indirect
