"""A FastAPI app on poolguard (app.py) and the chaos driver that proves it (chaos.py)."""
