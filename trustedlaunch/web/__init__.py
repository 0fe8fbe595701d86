"""The read-only web dashboard (server-rendered pages under /ui)."""
