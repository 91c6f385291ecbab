# Shared by the conformance scripts (sourced).

# A loopback port free right now (the kernel's pick): the scripts run side by side in two lanes,
# so a random pick from a fixed range could collide.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
