// SPDX-License-Identifier: Apache-2.0
// Host-side pieces every architecture's CUDA runner shares (rwkv7_cuda.cu,
// rwkv6_cuda.cu): error macros, the per-shape CUDA graph cache and the
// device table of the batch's state pointers. Internal to the CUDA backend.
#ifndef STATESTREAM_WORKER_ENGINE_CUDA_HOST_UTIL_CUH_
#define STATESTREAM_WORKER_ENGINE_CUDA_HOST_UTIL_CUH_

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <tuple>

#include "worker/engine/cuda/runner.h"

// In functions returning bool with a `std::string* error` in scope: on
// failure, say what failed and return false. SS_GPU_CHECK_ is the shared
// body: `ok` is the library's success value, `describe` names a status.
#define SS_GPU_CHECK_(expr, ok, describe)                  \
  do {                                                     \
    const auto s_ = (expr);                                \
    if (s_ != (ok)) {                                      \
      if (error != nullptr) {                              \
        *error = std::string(#expr) + ": " + describe(s_); \
      }                                                    \
      return false;                                        \
    }                                                      \
  } while (0)
#define SS_CUDA(expr) SS_GPU_CHECK_(expr, cudaSuccess, cudaGetErrorString)
#define SS_CUBLAS(expr) \
  SS_GPU_CHECK_(expr, CUBLAS_STATUS_SUCCESS, cublasGetStatusString)

namespace statestream::engine::cuda {

// One instantiated CUDA graph per chunk shape (rows, segments, logit rows).
class ChunkGraphs {
 public:
  using Key = std::tuple<int, int, int>;
  ChunkGraphs() = default;
  ChunkGraphs(const ChunkGraphs&) = delete;
  ChunkGraphs& operator=(const ChunkGraphs&) = delete;
  ~ChunkGraphs() { Clear(); }

  void Clear() {
    for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
    graphs_.clear();
  }

  // Replays the graph of `key` on `stream`, capturing `run(error)` (which
  // enqueues the chunk's work on `stream`) the first time.
  template <typename Run>
  bool Launch(cudaStream_t stream, const Key& key, const Run& run,
              std::string* error) {
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph = nullptr;
      SS_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      std::string run_error;
      const bool ok = run(&run_error);
      const cudaError_t end = cudaStreamEndCapture(stream, &graph);
      if (!ok) {
        if (graph != nullptr) cudaGraphDestroy(graph);
        *error = "graph capture: " + run_error;
        return false;
      }
      SS_CUDA(end);
      cudaGraphExec_t exec = nullptr;
      const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      SS_CUDA(inst);
      it = graphs_.emplace(key, exec).first;
    }
    SS_CUDA(cudaGraphLaunch(it->second, stream));
    return true;
  }

 private:
  std::map<Key, cudaGraphExec_t> graphs_;
};

// The batch's state pointers, in a device table the kernels index by
// sequence (and a pinned host copy it is uploaded from).
class StateTable {
 public:
  StateTable() = default;
  StateTable(const StateTable&) = delete;
  StateTable& operator=(const StateTable&) = delete;
  ~StateTable() {
    cudaFree(device_);
    cudaFreeHost(host_);
  }

  float** device() const { return device_; }

  // Enqueues the upload of seqs[i].state for i < n on `stream`. Growing the
  // table moves it, so `graphs` (which captured its address) are dropped.
  bool Upload(const SeqWork* seqs, int n, cudaStream_t stream,
              ChunkGraphs& graphs, std::string* error) {
    if (n > cap_) {
      cudaFree(device_);
      cudaFreeHost(host_);
      device_ = nullptr;
      host_ = nullptr;
      cap_ = 0;
      SS_CUDA(cudaMalloc(&device_, sizeof(float*) * n));
      SS_CUDA(cudaMallocHost(&host_, sizeof(float*) * n));
      cap_ = n;
      graphs.Clear();
    }
    for (int i = 0; i < n; ++i) host_[i] = seqs[i].state;
    SS_CUDA(cudaMemcpyAsync(device_, host_, sizeof(float*) * n,
                            cudaMemcpyHostToDevice, stream));
    return true;
  }

 private:
  float** device_ = nullptr;
  float** host_ = nullptr;  // pinned
  int cap_ = 0;
};

}  // namespace statestream::engine::cuda

#endif  // STATESTREAM_WORKER_ENGINE_CUDA_HOST_UTIL_CUH_
