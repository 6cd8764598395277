"""A faithful local emulator of RunPod's Serverless queue API, with a demo text model.

The demo model is not a language model: it echoes the prompt and pads the reply with filler.
See docs/runpod_emulator.md.

    from chatapp.runpod_emulator import EmulatorConfig, EmulatorServer
    srv = EmulatorServer(EmulatorConfig(cold_start_s=0.05), port=0, api_key="k")
    srv.start()                       # listening on srv.base_url, e.g. http://127.0.0.1:43123/v2
    srv.emulator.billing("my-endpoint", settle=True)
    srv.stop()
"""
from chatapp.runpod_emulator.config import GPU_PRICES_PER_S, EmulatorConfig, RateLimits
from chatapp.runpod_emulator.emulator import Emulator
from chatapp.runpod_emulator.faults import FAULTS
from chatapp.runpod_emulator.server import EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorServer", "Emulator", "RateLimits", "FAULTS",
           "GPU_PRICES_PER_S"]
