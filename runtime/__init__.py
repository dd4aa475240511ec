"""Real-time runtime: clock, action buffer, safety layer, controller loop, inference worker, drivers,
teleop and recorder. Never imports ``sim`` (the real-arm path must not need MuJoCo)."""
