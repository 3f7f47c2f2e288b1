"""Infrastructure around the mesh: the embedded launcher, SQL migrations and deployment pieces."""
