"""``turnstore serve``: its options, the command, the app wiring the layers, ports and logs."""
