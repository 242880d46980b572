"""Camera drivers: control channels, read-only volumes, driver registry and the camera simulator."""
