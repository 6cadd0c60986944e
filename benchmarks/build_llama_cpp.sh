#!/usr/bin/env bash
# Build llama.cpp (the peer, never an lfmc dependency) from the package index's llama-cpp-python
# source distribution into a benchmark environment outside the project's .venv.
# Follows ../shared/recipes/llama-cpp-bench.md. About 15 minutes on 2 cores; done once per machine.
#   benchmarks/build_llama_cpp.sh [DIR]      (default: $LFMC_LLAMA_CPP_DIR or ~/.cache/lfmc-bench/llama.cpp)
# Leaves DIR/bin/llama-bench, DIR/bin/llama-batched-bench, DIR/bin/llama-server (optional: its web UI left out;
# benchmarks/loadgen.py --llama-server), DIR/bin/llama-quantize, DIR/bin/llama-perplexity, DIR/bin/llama-mtmd-cli (images:
# benchmarks/vision_encode.py --llama-cpp), DIR/convert_hf_to_gguf.py and
# DIR/venv (python with gguf and llama_cpp, whose tokenizer benchmarks/quality.py compares with lfmc's).
set -euo pipefail
VER=0.3.36
DIR="${1:-${LFMC_LLAMA_CPP_DIR:-$HOME/.cache/lfmc-bench/llama.cpp}}"
mkdir -p "$DIR" && cd "$DIR"
if [ -x bin/llama-bench ] && [ -x bin/llama-quantize ] && [ -x bin/llama-perplexity ] && [ -x bin/llama-mtmd-cli ] \
   && [ -x bin/llama-batched-bench ] && [ -x bin/llama-server ]; then
  echo "llama.cpp already built in $DIR"; exit 0
fi
PY="${PYTHON:-python3}"
[ -d venv ] || "$PY" -m venv venv
venv/bin/pip install -q --upgrade pip >/dev/null
venv/bin/pip install -q "numpy<3" gguf sentencepiece "transformers==5.24.0" scikit-build-core cmake ninja diskcache jinja2 typing-extensions
if [ ! -d "llama_cpp_python-$VER" ]; then
  venv/bin/pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VER" -d src
  tar xzf src/llama_cpp_python-$VER.tar.gz
fi
# The package's own build (shared libraries); build dir kept so a rerun is incremental (skipped once installed).
venv/bin/python -c "import llama_cpp" 2>/dev/null || \
CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" venv/bin/pip install -q --no-deps --no-build-isolation \
  -C build-dir="$DIR/build" "./llama_cpp_python-$VER"
L="llama_cpp_python-$VER/vendor/llama.cpp"
B="$DIR/build/bin"
[ -f "$B/libllama.so" ] || B="$(dirname "$(find "$DIR/build" -name 'libllama.so' | head -1)")"
mkdir -p bin
INC="-I$L/include -I$L/ggml/include -I$L/common -I$L/vendor -I$L/src"
LIBS="-L$B -lllama-common -lllama -lggml -lggml-base -lggml-cpu -Wl,-rpath,$B -lpthread"
[ -e "$B/libllama-common.so" ] || LIBS="${LIBS/-lllama-common /-lcommon }"
[ -x bin/llama-bench ] || g++ -O2 -DNDEBUG -std=c++17 $INC -I$L/tools/llama-bench $L/tools/llama-bench/llama-bench.cpp \
  $( [ -f $L/tools/llama-bench/main.cpp ] && echo $L/tools/llama-bench/main.cpp ) $LIBS -o bin/llama-bench
[ -x bin/llama-quantize ] || g++ -O2 -DNDEBUG -std=c++17 $INC -I$L/tools/quantize $L/tools/quantize/quantize.cpp \
  $( [ -f $L/tools/quantize/main.cpp ] && echo $L/tools/quantize/main.cpp ) $LIBS -o bin/llama-quantize
[ -x bin/llama-perplexity ] || g++ -O2 -DNDEBUG -std=c++17 $INC -I$L/tools/perplexity $L/tools/perplexity/perplexity.cpp \
  $( [ -f $L/tools/perplexity/main.cpp ] && echo $L/tools/perplexity/main.cpp ) $LIBS -o bin/llama-perplexity
# aggregate decode of parallel sequences (benchmarks/batched_decode.py)
[ -x bin/llama-batched-bench ] || g++ -O2 -DNDEBUG -std=c++17 $INC -I$L/tools/batched-bench \
  $L/tools/batched-bench/batched-bench.cpp $( [ -f $L/tools/batched-bench/main.cpp ] && echo $L/tools/batched-bench/main.cpp ) \
  $LIBS -o bin/llama-batched-bench
# the multimodal CLI (LFM2-VL through its mtmd library, built by the package as libmtmd)
M="$(dirname "$(find "$DIR/build" -name 'libmtmd.so' | head -1)")"
[ -x bin/llama-mtmd-cli ] || g++ -O2 -DNDEBUG -std=c++17 $INC -I$L/tools/mtmd $L/tools/mtmd/mtmd-cli.cpp \
  -L"$M" -lmtmd -Wl,-rpath,"$M" $LIBS -o bin/llama-mtmd-cli
# llama-server (the HTTP peer of benchmarks/loadgen.py): its sources, cpp-httplib and an empty UI asset table
# (the web UI is fetched or built with npm upstream; neither is needed to serve the API). Optional: a failure
# is reported and the other tools stay.
build_server() {
  local S=$L/tools/server U="$DIR/server-ui" O="$DIR/server-obj"
  mkdir -p "$U" "$O"
  venv/bin/cmake -DUI_SOURCE_DIR="$L/tools/ui" -DUI_BINARY_DIR="$U" -DLLAMA_SOURCE_DIR="$L" -DHF_ENABLED=OFF \
    -DBUILD_UI=OFF -DLLAMA_UI_GZIP=OFF -P "$L/scripts/ui-assets.cmake" >/dev/null
  ls "$S"/*.cpp "$U/ui.cpp" "$L/vendor/cpp-httplib/httplib.cpp" | xargs -P "${JOBS:-2}" -I{} sh -c \
    'o="$0/$(basename "$1" .cpp).o"; [ -f "$o" ] || g++ -O2 -DNDEBUG -std=c++17 -w $2 -I"$3" -I"$4" -I"$5/tools/mtmd" \
     -I"$5" -DCPPHTTPLIB_FORM_URL_ENCODED_PAYLOAD_MAX_LENGTH=1048576 -DCPPHTTPLIB_LISTEN_BACKLOG=512 \
     -DCPPHTTPLIB_REQUEST_URI_MAX_LENGTH=32768 -DCPPHTTPLIB_TCP_NODELAY=1 -c "$1" -o "$o"' "$O" {} "$INC" "$S" "$U" "$L"
  g++ "$O"/*.o -L"$M" -lmtmd -Wl,-rpath,"$M" $LIBS -o bin/llama-server
}
[ -x bin/llama-server ] || build_server || echo "llama-server did not build (optional: loadgen.py runs without it)"
ln -sf "$L/convert_hf_to_gguf.py" convert_hf_to_gguf.py
echo "llama.cpp built in $DIR"
