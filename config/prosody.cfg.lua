-- Attaching Jabbridge to Prosody (0.12): add these lines to prosody.cfg.lua.
-- The integration tests (tests/integration/harness.rs) run Prosody with the same settings.

-- The port Jabbridge connects to ([xmpp] server in jabbridge.toml). Plain TCP: keep it on
-- loopback, or on a private network between Prosody and Jabbridge.
component_ports = { 5347 }
component_interfaces = { "127.0.0.1" }

-- One Component per [[bridge]] in jabbridge.toml, with the same domain and secret.
Component "echo.example.org"
    component_secret = "the same secret as bridge.secret in jabbridge.toml"

-- Component "sms.example.org"
--     component_secret = "another secret"
