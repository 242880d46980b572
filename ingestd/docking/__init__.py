"""Dock detection: device sources (udev, watched folders) turned into Docked/Undocked events."""
