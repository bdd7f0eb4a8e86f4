"""The ZeroMQ mesh: signed agent cards, transport, discovery, presence, hardening."""
