"""Real local servers, a fault-injecting proxy and a pytest plugin for testing with poolguard."""
