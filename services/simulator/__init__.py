"""The traffic simulator (`itsmesh simulate`): synthetic cameras and GPS devices with known ground truth.

A client-only process (DESIGN §2). The pure parts build a deterministic (seeded) run and never touch the
network or the clock: ``geometry`` (pinhole camera, road-plane homography), ``scene`` (vehicles and
their trajectories), ``frames`` (capture schedule and edge detections), ``render`` (OpenCV JPEGs),
``camera_config`` (the ``Camera`` the streaming service registers), ``gps`` (devices, routes, events),
``truth`` (the ground-truth file), ``plan`` (all of it for one run) and ``messages`` (frames as protos).
The shell: ``access`` (login, registration of cameras, devices and the geofence), ``sinks`` (where frames
go), ``driver`` (a run in real time) and ``command`` (the CLI's loop and live progress); ``config`` holds
the settings.
"""
