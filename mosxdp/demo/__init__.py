"""The demo and its lab: the veth testbed, the demo app and HTTP server, and the XDP pass
program for the endpoints. Nothing in core, engine or io uses it."""
