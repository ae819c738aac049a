"""Party runtime: transports, dealer, runners, launcher and CLI (the outer layer)."""
