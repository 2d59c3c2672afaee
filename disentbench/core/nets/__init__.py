"""The study's networks and losses: conv encoder/decoder, the Gaussian VAE base, loss terms."""
