# QuiLLMan GPU image: Ray + the quillman package with its [gpu] extra (vLLM, transformers, coqui-tts).
#   docker build -t quillman:0.1.0-gpu .
#   docker build --build-arg WITH_FLASH_ATTN=1 -t quillman:0.1.0-gpu .   # + flash-attn 2 (slow build)
# Used by configs/kuberay/rayservice.yaml and for a single GPU box (docs/deploy.md).
# Model weights are not baked in: mount a Hugging Face cache at /models/huggingface.
# NOT YET BUILT OR RUN ON A GPU in this project's CI (no GPU there).
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}

# Compilers: the base install builds llama-cpp-python (the CPU profile's LLM) from source.
# libsndfile: soundfile; ffmpeg: torchcodec, which torchaudio uses to read XTTS reference wavs;
# espeak-ng: phonemes for the CPU profile's Piper voice.
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake libsndfile1 ffmpeg espeak-ng \
    && rm -rf /var/lib/apt/lists/*
USER ray

WORKDIR /home/ray/quillman
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users quillman ./quillman
# llama-cpp-python (the CPU profile's LLM) is compiled here: for the portable x86-64-v3 baseline,
# never llama.cpp's host-native default (the flags are the Makefile's LLAMA_CMAKE_ARGS_x86-64-v3;
# a test keeps the two equal).
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
RUN CMAKE_ARGS="$LLAMA_CMAKE_ARGS" FORCE_CMAKE=1 pip install --no-cache-dir ".[gpu]"
# semantic_vad's Smart Turn model: only the data file of the pipecat-ai wheel (see the Makefile).
RUN pip install --no-cache-dir --no-deps "pipecat-ai==1.14.0"

# flash-attn compiles against the installed torch, hence --no-build-isolation; without it the
# transformers Whisper backend uses PyTorch SDPA attention.
ARG WITH_FLASH_ATTN=0
RUN if [ "$WITH_FLASH_ATTN" = "1" ]; then \
        pip install --no-cache-dir --no-build-isolation "flash-attn>=2.6"; \
    fi

COPY --chown=ray:users web ./web
COPY --chown=ray:users configs ./configs
COPY --chown=ray:users serve_config.yaml ./

ENV QUILLMAN_WEB_DIR=/home/ray/quillman/web \
    HF_HOME=/models/huggingface \
    HF_HUB_OFFLINE=1
EXPOSE 8000
CMD ["serve", "run", "configs/gpu-1x.yaml"]
