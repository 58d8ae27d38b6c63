/*
 * edge_bench: the native runner. Same protocol as the runner scripts in targets/runners/, without Python:
 *
 *   edge_bench --runtime litert|onnxruntime|openvino --lib LIBRARY MODEL
 *              [--inputs X.npy|X.npz] [--outputs Y.npz] [--limit N] [--bench] [--threads T]
 *              [--warmup W] [--runs R] [--min-seconds S] [--sections K] [--runtime-version V]
 *              [--expect DIR --atol A[,A...]] [--precision f32|default] [--delegate xnnpack]
 *
 * prints one JSON object on the last line of stdout, exit 0 if "ok" is true. LIBRARY is the
 * runtime's own C library from its Python wheel (libLiteRt.so, libonnxruntime.so.*,
 * libopenvino_c.so.*), loaded with dlopen: one binary serves whichever runtime is present.
 * Inputs are samples (N, ...) as numpy saves them: an .npy for a model with one input, an .npz with
 * one array per input name (or, unnamed, in order) for several, as runner_common.load_inputs reads
 * them. Each is cast to its input's type as runner_common.one_call does, before any timing; int8 inputs are quantized
 * here and int8 outputs dequantized (per-tensor scale and zero point from the model), so the outputs
 * (.npz of output_<i>, float32) compare with the Python runners' directly. --precision (OpenVINO)
 * and --delegate (LiteRT) are the Python runners' runtime options; the CompiledModel API of LiteRT
 * runs XNNPACK only, so --delegate none is refused.
 *
 * Only the few functions used are declared, from each runtime's public C API (LiteRT
 * litert/c/, onnxruntime_c_api.h, openvino/c/); the wheels ship no LiteRT or ORT headers.
 * --sections K repeats the timed loop K times, each between the qemu instruction-count markers
 * (lseek(-1, MAGIC, SEEK_SET), see scripts/qemu_plugin/insn_count.c), in one process; the latency
 * statistics are the last section's. --expect DIR compares every output with DIR/output_<i>.npy within
 * the i-th tolerance of --atol and fails the run when one differs more (release bundles' run.sh).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define MARK_START 0x51454D55L
#define MARK_STOP 0x51454D56L
#define MARK_PROFILE_START 0x51454D57L /* scripts/qemu_plugin/guest_trace.c: the profiled inferences */
#define MARK_PROFILE_STOP 0x51454D58L
#define MARK_PROFILE_CALL 0x51454D59L
#define PROFILE_CALLS 10
#define MAX_IO 16
#define MAX_RANK 8

/* ------------------------------------------------------------------ errors, JSON */

static char g_error[1024];

static bool fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return false;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* ------------------------------------------------------------------ tensors */

typedef enum { DT_F32, DT_I8, DT_U8, DT_I32, DT_I64, DT_F16, DT_OTHER } dtype_t;
static const char *DT_NAME[] = {"float32", "int8", "uint8", "int32", "int64", "float16", "other"};
static const size_t DT_SIZE[] = {4, 1, 1, 4, 8, 2, 0};

typedef struct {
    char name[128];
    int rank;
    int64_t shape[MAX_RANK];
    dtype_t dtype;
    double scale;     /* 0: not quantized */
    int64_t zero_point;
    size_t bytes;     /* one sample */
    void *buf;        /* the buffer the runtime reads or writes, 64-byte aligned */
} io_t;

static size_t elements(const io_t *t) {
    size_t n = 1;
    for (int i = 0; i < t->rank; i++) n *= (size_t)(t->shape[i] > 0 ? t->shape[i] : 1);
    return n;
}

static void *aligned(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64)) return NULL;
    memset(p, 0, bytes ? bytes : 64);
    return p;
}

/* ------------------------------------------------------------------ runtimes */

static const char *g_precision = "f32"; /* OpenVINO: f32, or default (the CPU plugin's choice, bf16/fp16) */
static bool g_profiling; /* the second, profiled session of --profile */

typedef struct runtime {
    const char *name;
    bool (*load)(struct runtime *rt, const char *lib, const char *model, int threads);
    bool (*infer)(struct runtime *rt);  /* reads in[i].buf, writes out[i].buf */
    /* --profile (optional): print `, "profile": [...]` of the inferences since load, as the Python runner's
       profile(session, calls) returns; load() turned the runtime's profiler on when g_profiling is set. */
    bool (*profile)(struct runtime *rt, FILE *o, int calls);
    bool (*profile_start)(struct runtime *rt); /* optional: start the profiler after the first (setup) inference */
    char version[128];
    const char *delegate;
    char precision[16]; /* OpenVINO's inference precision, as compiled */
    int n_in, n_out;
    io_t in[MAX_IO], out[MAX_IO];
    void *state;
} runtime_t;

static void *need(void *lib, const char *sym) {
    void *p = dlsym(lib, sym);
    if (!p) fail("%s has no symbol %s", "runtime library", sym);
    return p;
}
#define BIND(lib, var, sym) if (!(*(void **)&(var) = need(lib, sym))) return false

/* ---- LiteRT: the CompiledModel C API of libLiteRt.so (litert/c/litert_*.h, LiteRT 2.x) */

typedef int LiteRtStatus; /* 0 = ok */
typedef struct {
    int element_type;
    struct {
        unsigned int rank : 7;
        bool has_strides : 1;
        int32_t dimensions[8];
        uint32_t strides[8];
    } layout;
} LiteRtRankedTensorType; /* 72 bytes: LiteRT's static_assert */
typedef struct { float scale; int64_t zero_point; } LiteRtQuantizationPerTensor;
typedef struct { size_t total_allocated, in_use_allocated, private_footprint; } LiteRtMemoryUsage;
typedef struct { /* ProfiledEventData (litert/c/litert_common.h) */
    const char *tag;
    int event_type;
    uint64_t start_timestamp_us, elapsed_time_us;
    LiteRtMemoryUsage begin_mem_usage, end_mem_usage;
    uint64_t event_metadata1, event_metadata2;
    int event_source;
} LiteRtProfiledEventData;
_Static_assert(sizeof(LiteRtProfiledEventData) == 104, "ProfiledEventData of LiteRT 2.x");
enum { kLiteRtHwAcceleratorCpu = 1, kLiteRtQuantizationPerTensor = 1 };

static struct {
    LiteRtStatus (*CreateEnvironment)(int, const void *, void **);
    LiteRtStatus (*CreateModelFromFile)(void *env, const char *, void **);
    LiteRtStatus (*CreateOptions)(void **);
    LiteRtStatus (*SetOptionsHardwareAccelerators)(void *, int);
    LiteRtStatus (*CreateOpaqueOptions)(const char *, void *, void (*)(void *), void **);
    LiteRtStatus (*AddOpaqueOptions)(void *, void *);
    LiteRtStatus (*CreateCompiledModel)(void *env, void *model, void *options, void **);
    LiteRtStatus (*GetModelSignature)(void *model, size_t, void **);
    LiteRtStatus (*GetNumSignatureInputs)(void *sig, size_t *);
    LiteRtStatus (*GetNumSignatureOutputs)(void *sig, size_t *);
    LiteRtStatus (*GetSignatureInputTensorByIndex)(void *sig, size_t, void **);
    LiteRtStatus (*GetSignatureOutputTensorByIndex)(void *sig, size_t, void **);
    LiteRtStatus (*GetSignatureInputName)(void *sig, size_t, const char **);
    LiteRtStatus (*GetSignatureOutputName)(void *sig, size_t, const char **);
    LiteRtStatus (*GetRankedTensorType)(void *tensor, LiteRtRankedTensorType *);
    LiteRtStatus (*GetQuantizationTypeId)(void *tensor, int *);
    LiteRtStatus (*GetPerTensorQuantization)(void *tensor, LiteRtQuantizationPerTensor *);
    LiteRtStatus (*CreateTensorBufferFromHostMemory)(const LiteRtRankedTensorType *, void *, size_t,
                                                     void (*)(void *), void **);
    LiteRtStatus (*RunCompiledModel)(void *cm, size_t, size_t, void **, size_t, void **);
    const char *(*GetStatusString)(LiteRtStatus);
    /* --profile: LiteRT's profiler (litert/c/litert_profiler.h, litert_compiled_model.h) */
    LiteRtStatus (*CompiledModelGetProfiler)(void *cm, void **);
    LiteRtStatus (*ResetProfiler)(void *);
    LiteRtStatus (*StartProfiler)(void *);
    LiteRtStatus (*StopProfiler)(void *);
    LiteRtStatus (*GetNumProfilerEvents)(void *, int *);
    LiteRtStatus (*GetProfilerEvents)(void *, int, LiteRtProfiledEventData *);
} lrt;

typedef struct { void *compiled, *profiler; void *in_bufs[MAX_IO]; void *out_bufs[MAX_IO]; } litert_state_t;

static dtype_t litert_dtype(int t) {
    switch (t) {
    case 1: return DT_F32;
    case 9: return DT_I8;
    case 3: return DT_U8;
    case 2: return DT_I32;
    case 4: return DT_I64;
    case 10: return DT_F16;
    default: return DT_OTHER;
    }
}

#define LRT(call, what) do { LiteRtStatus s_ = (call); if (s_) \
    return fail("LiteRT %s failed: %s (%d)", what, lrt.GetStatusString ? lrt.GetStatusString(s_) : "", s_); } while (0)

static bool litert_io(void *tensor, const char *name, io_t *io, LiteRtRankedTensorType *type) {
    LRT(lrt.GetRankedTensorType(tensor, type), "GetRankedTensorType");
    snprintf(io->name, sizeof io->name, "%s", name ? name : "");
    io->rank = type->layout.rank;
    for (int d = 0; d < io->rank && d < MAX_RANK; d++) {
        if (type->layout.dimensions[d] < 0) type->layout.dimensions[d] = 1; /* a free batch: batch 1 */
        io->shape[d] = type->layout.dimensions[d];
    }
    io->dtype = litert_dtype(type->element_type);
    int q = 0;
    if (lrt.GetQuantizationTypeId(tensor, &q) == 0 && q == kLiteRtQuantizationPerTensor) {
        LiteRtQuantizationPerTensor p;
        LRT(lrt.GetPerTensorQuantization(tensor, &p), "GetPerTensorQuantization");
        io->scale = p.scale;
        io->zero_point = p.zero_point;
    }
    io->bytes = elements(io) * DT_SIZE[io->dtype];
    io->buf = aligned(io->bytes);
    return true;
}

static bool litert_load(runtime_t *rt, const char *path, const char *model, int threads) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return fail("cannot load %s: %s", path, dlerror());
    BIND(lib, lrt.CreateEnvironment, "LiteRtCreateEnvironment");
    BIND(lib, lrt.CreateModelFromFile, "LiteRtCreateModelFromFile");
    BIND(lib, lrt.CreateOptions, "LiteRtCreateOptions");
    BIND(lib, lrt.SetOptionsHardwareAccelerators, "LiteRtSetOptionsHardwareAccelerators");
    BIND(lib, lrt.CreateOpaqueOptions, "LiteRtCreateOpaqueOptions");
    BIND(lib, lrt.AddOpaqueOptions, "LiteRtAddOpaqueOptions");
    BIND(lib, lrt.CreateCompiledModel, "LiteRtCreateCompiledModel");
    BIND(lib, lrt.GetModelSignature, "LiteRtGetModelSignature");
    BIND(lib, lrt.GetNumSignatureInputs, "LiteRtGetNumSignatureInputs");
    BIND(lib, lrt.GetNumSignatureOutputs, "LiteRtGetNumSignatureOutputs");
    BIND(lib, lrt.GetSignatureInputTensorByIndex, "LiteRtGetSignatureInputTensorByIndex");
    BIND(lib, lrt.GetSignatureOutputTensorByIndex, "LiteRtGetSignatureOutputTensorByIndex");
    BIND(lib, lrt.GetSignatureInputName, "LiteRtGetSignatureInputName");
    BIND(lib, lrt.GetSignatureOutputName, "LiteRtGetSignatureOutputName");
    BIND(lib, lrt.GetRankedTensorType, "LiteRtGetRankedTensorType");
    BIND(lib, lrt.GetQuantizationTypeId, "LiteRtGetQuantizationTypeId");
    BIND(lib, lrt.GetPerTensorQuantization, "LiteRtGetPerTensorQuantization");
    BIND(lib, lrt.CreateTensorBufferFromHostMemory, "LiteRtCreateTensorBufferFromHostMemory");
    BIND(lib, lrt.RunCompiledModel, "LiteRtRunCompiledModel");
    *(void **)&lrt.GetStatusString = dlsym(lib, "LiteRtGetStatusString"); /* not in every release */

    litert_state_t *st = calloc(1, sizeof *st);
    rt->state = st;
    void *env = NULL, *m = NULL, *opts = NULL, *cpu = NULL, *sig = NULL;
    LRT(lrt.CreateEnvironment(0, NULL, &env), "CreateEnvironment");
    LRT(lrt.CreateModelFromFile(env, model, &m), "CreateModelFromFile");
    LRT(lrt.CreateOptions(&opts), "CreateOptions");
    LRT(lrt.SetOptionsHardwareAccelerators(opts, kLiteRtHwAcceleratorCpu), "SetOptionsHardwareAccelerators");
    /* The CPU accelerator's options travel as a TOML payload named "xnnpack"
       (litert/c/options/litert_cpu_options.cc); the wheel exports no LiteRtCreateCpuOptions. */
    char *toml = malloc(64);
    snprintf(toml, 64, "num_threads = %d\n", threads);
    LRT(lrt.CreateOpaqueOptions("xnnpack", toml, free, &cpu), "CreateOpaqueOptions");
    LRT(lrt.AddOpaqueOptions(opts, cpu), "AddOpaqueOptions");
    if (g_profiling) {
        /* Profiling is a runtime option, a TOML payload named "runtime_options_string"
           (litert/c/options/litert_runtime_options.cc); the wheel exports no LrtCreateRuntimeOptions. */
        BIND(lib, lrt.CompiledModelGetProfiler, "LiteRtCompiledModelGetProfiler");
        BIND(lib, lrt.ResetProfiler, "LiteRtResetProfiler");
        BIND(lib, lrt.StartProfiler, "LiteRtStartProfiler");
        BIND(lib, lrt.StopProfiler, "LiteRtStopProfiler");
        BIND(lib, lrt.GetNumProfilerEvents, "LiteRtGetNumProfilerEvents");
        BIND(lib, lrt.GetProfilerEvents, "LiteRtGetProfilerEvents");
        void *runtime_opts = NULL;
        LRT(lrt.CreateOpaqueOptions("runtime_options_string", strdup("enable_profiling = true\n"), free, &runtime_opts),
            "CreateOpaqueOptions");
        LRT(lrt.AddOpaqueOptions(opts, runtime_opts), "AddOpaqueOptions");
    }
    LRT(lrt.CreateCompiledModel(env, m, opts, &st->compiled), "CreateCompiledModel");
    if (g_profiling) {
        LRT(lrt.CompiledModelGetProfiler(st->compiled, &st->profiler), "CompiledModelGetProfiler");
        if (!st->profiler) return fail("LiteRT made no profiler for the compiled model");
    }
    LRT(lrt.GetModelSignature(m, 0, &sig), "GetModelSignature");
    size_t n_in = 0, n_out = 0;
    LRT(lrt.GetNumSignatureInputs(sig, &n_in), "GetNumSignatureInputs");
    LRT(lrt.GetNumSignatureOutputs(sig, &n_out), "GetNumSignatureOutputs");
    if (n_in > MAX_IO || n_out > MAX_IO) return fail("more than %d inputs or outputs", MAX_IO);
    rt->n_in = (int)n_in;
    rt->n_out = (int)n_out;
    for (int k = 0; k < 2; k++) {
        int n = k ? rt->n_out : rt->n_in;
        for (int i = 0; i < n; i++) {
            void *tensor = NULL;
            const char *name = NULL;
            LiteRtRankedTensorType type;
            memset(&type, 0, sizeof type);
            if (k) {
                LRT(lrt.GetSignatureOutputTensorByIndex(sig, i, &tensor), "GetSignatureOutputTensorByIndex");
                lrt.GetSignatureOutputName(sig, i, &name);
            } else {
                LRT(lrt.GetSignatureInputTensorByIndex(sig, i, &tensor), "GetSignatureInputTensorByIndex");
                lrt.GetSignatureInputName(sig, i, &name);
            }
            io_t *io = k ? &rt->out[i] : &rt->in[i];
            if (!litert_io(tensor, name, io, &type)) return false;
            void **slot = k ? &st->out_bufs[i] : &st->in_bufs[i];
            LRT(lrt.CreateTensorBufferFromHostMemory(&type, io->buf, io->bytes, NULL, slot),
                "CreateTensorBufferFromHostMemory");
        }
    }
    rt->delegate = "xnnpack";
    return true;
}

static bool litert_infer(runtime_t *rt) {
    litert_state_t *st = rt->state;
    LRT(lrt.RunCompiledModel(st->compiled, 0, rt->n_in, st->in_bufs, rt->n_out, st->out_bufs),
        "RunCompiledModel");
    return true;
}

static bool litert_profile_start(runtime_t *rt) {
    litert_state_t *st = rt->state;
    LRT(lrt.ResetProfiler(st->profiler), "ResetProfiler");
    LRT(lrt.StartProfiler(st->profiler), "StartProfiler");
    return true;
}

/* LiteRT's profiler events of the profiled inferences, [tag, type, start_us, us, index] each: the caller
   (pipeline/native.py) makes them op records as run_litert.py does (targets/runners/litert_profiler.op_records). */
static bool litert_profile(runtime_t *rt, FILE *o, int calls) {
    litert_state_t *st = rt->state;
    int n = 0;
    LRT(lrt.StopProfiler(st->profiler), "StopProfiler");
    LRT(lrt.GetNumProfilerEvents(st->profiler, &n), "GetNumProfilerEvents");
    LiteRtProfiledEventData *events = calloc(n > 0 ? (size_t)n : 1, sizeof *events);
    if (!events) return fail("out of memory");
    LiteRtStatus s = lrt.GetProfilerEvents(st->profiler, n, events);
    if (s) {
        free(events);
        return fail("LiteRT GetProfilerEvents failed (%d)", s);
    }
    fprintf(o, ", \"profile_events\": [");
    for (int i = 0; i < n; i++) {
        const LiteRtProfiledEventData *e = &events[i];
        fprintf(o, "%s[", i ? ", " : "");
        json_str(o, e->tag ? e->tag : "");
        fprintf(o, ", %d, %llu, %llu, %llu]", e->event_type, (unsigned long long)e->start_timestamp_us,
                (unsigned long long)e->elapsed_time_us, (unsigned long long)e->event_metadata1);
    }
    fputc(']', o);
    free(events);
    (void)calls;
    return true;
}

/* ---- onnxruntime: OrtGetApiBase() -> OrtApi, a table of function pointers. The indices are the
   entries' positions in struct OrtApi (onnxruntime_c_api.h), which only ever grows at the end. */

enum {
    ORT_GetErrorMessage = 2, ORT_CreateEnv = 3, ORT_CreateSession = 7, ORT_Run = 9,
    ORT_CreateSessionOptions = 10, ORT_SetSessionExecutionMode = 13, ORT_EnableProfiling = 14,
    ORT_SetSessionLogSeverityLevel = 22, ORT_SetIntraOpNumThreads = 24, ORT_SetInterOpNumThreads = 25,
    ORT_SessionGetInputCount = 30, ORT_SessionGetOutputCount = 31, ORT_SessionGetInputTypeInfo = 33,
    ORT_SessionGetOutputTypeInfo = 34, ORT_SessionGetInputName = 36, ORT_SessionGetOutputName = 37,
    ORT_CreateTensorWithDataAsOrtValue = 49, ORT_CastTypeInfoToTensorInfo = 55,
    ORT_GetTensorElementType = 60, ORT_GetDimensionsCount = 61, ORT_GetDimensions = 62,
    ORT_CreateCpuMemoryInfo = 69, ORT_GetAllocatorWithDefaultOptions = 78, ORT_ReleaseStatus = 93, ORT_ReleaseSession = 95,
};
#define ORT_API_VERSION 17 /* every entry used here exists since 1.17; the wheel is newer */

typedef struct { const void *(*GetApi)(uint32_t); const char *(*GetVersionString)(void); } OrtApiBase;
static void *const *ort;
#define ORTF(idx, type) ((type)ort[idx])
typedef void *OrtStatusPtr;

typedef struct {
    void *session;
    char trace_dir[64]; /* --profile: where onnxruntime writes its profiler trace */
    long long profile_start_ns; /* CLOCK_REALTIME before the session (and its profiler) started */
    void *in_values[MAX_IO];
    void *out_values[MAX_IO];
    const char *in_names[MAX_IO];
    const char *out_names[MAX_IO];
} ort_state_t;

static bool ort_ok(OrtStatusPtr s, const char *what) {
    if (!s) return true;
    fail("onnxruntime %s failed: %s", what, ORTF(ORT_GetErrorMessage, const char *(*)(OrtStatusPtr))(s));
    ORTF(ORT_ReleaseStatus, void (*)(OrtStatusPtr))(s);
    return false;
}
#define ORT(call, what) if (!ort_ok((call), what)) return false

static dtype_t ort_dtype(int t) {
    switch (t) {
    case 1: return DT_F32;
    case 2: return DT_U8;
    case 3: return DT_I8;
    case 6: return DT_I32;
    case 7: return DT_I64;
    case 10: return DT_F16;
    default: return DT_OTHER;
    }
}

static bool ort_io(ort_state_t *st, int output, size_t i, io_t *io, void *alloc, void *meminfo) {
    void *info = NULL;
    const void *tinfo = NULL;
    char *name = NULL;
    int type = 0;
    size_t rank = 0;
    ORT(ORTF(output ? ORT_SessionGetOutputTypeInfo : ORT_SessionGetInputTypeInfo,
             OrtStatusPtr (*)(void *, size_t, void **))(st->session, i, &info), "GetTypeInfo");
    ORT(ORTF(ORT_CastTypeInfoToTensorInfo, OrtStatusPtr (*)(const void *, const void **))(info, &tinfo),
        "CastTypeInfoToTensorInfo");
    ORT(ORTF(ORT_GetTensorElementType, OrtStatusPtr (*)(const void *, int *))(tinfo, &type), "GetTensorElementType");
    ORT(ORTF(ORT_GetDimensionsCount, OrtStatusPtr (*)(const void *, size_t *))(tinfo, &rank), "GetDimensionsCount");
    if (rank > MAX_RANK) return fail("rank %zu > %d", rank, MAX_RANK);
    ORT(ORTF(ORT_GetDimensions, OrtStatusPtr (*)(const void *, int64_t *, size_t))(tinfo, io->shape, rank),
        "GetDimensions");
    ORT(ORTF(output ? ORT_SessionGetOutputName : ORT_SessionGetInputName,
             OrtStatusPtr (*)(void *, size_t, void *, char **))(st->session, i, alloc, &name), "GetName");
    snprintf(io->name, sizeof io->name, "%s", name);
    *(output ? &st->out_names[i] : &st->in_names[i]) = name; /* kept for Run */
    io->rank = (int)rank;
    io->dtype = ort_dtype(type);
    for (int d = 0; d < io->rank; d++)
        if (io->shape[d] < 0) io->shape[d] = 1; /* a free batch: batch 1, as the Python runner feeds */
    io->bytes = elements(io) * DT_SIZE[io->dtype];
    io->buf = aligned(io->bytes);
    ORT(ORTF(ORT_CreateTensorWithDataAsOrtValue,
             OrtStatusPtr (*)(const void *, void *, size_t, const int64_t *, size_t, int, void **))(
            meminfo, io->buf, io->bytes, io->shape, rank, type,
            output ? &st->out_values[i] : &st->in_values[i]), "CreateTensorWithDataAsOrtValue");
    return true;
}

static bool ort_load(runtime_t *rt, const char *path, const char *model, int threads) {
    setenv("ORT_DISABLE_TELEMETRY", "1", 1);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return fail("cannot load %s: %s", path, dlerror());
    const OrtApiBase *(*get_base)(void);
    BIND(lib, get_base, "OrtGetApiBase");
    const OrtApiBase *base = get_base();
    ort = base->GetApi(ORT_API_VERSION);
    if (!ort) return fail("onnxruntime %s does not offer C API version %d", base->GetVersionString(), ORT_API_VERSION);
    snprintf(rt->version, sizeof rt->version, "%s", base->GetVersionString());
    ort_state_t *st = calloc(1, sizeof *st);
    rt->state = st;
    void *env = NULL, *so = NULL, *alloc = NULL, *meminfo = NULL;
    ORT(ORTF(ORT_CreateEnv, OrtStatusPtr (*)(int, const char *, void **))(3, "edge_bench", &env), "CreateEnv");
    ORT(ORTF(ORT_CreateSessionOptions, OrtStatusPtr (*)(void **))(&so), "CreateSessionOptions");
    /* As the Python runner: intra-op threads, one inter-op thread, sequential, errors only. */
    ORT(ORTF(ORT_SetIntraOpNumThreads, OrtStatusPtr (*)(void *, int))(so, threads), "SetIntraOpNumThreads");
    ORT(ORTF(ORT_SetInterOpNumThreads, OrtStatusPtr (*)(void *, int))(so, 1), "SetInterOpNumThreads");
    ORT(ORTF(ORT_SetSessionExecutionMode, OrtStatusPtr (*)(void *, int))(so, 0), "SetSessionExecutionMode");
    ORT(ORTF(ORT_SetSessionLogSeverityLevel, OrtStatusPtr (*)(void *, int))(so, 3), "SetSessionLogSeverityLevel");
    if (g_profiling) {
        snprintf(st->trace_dir, sizeof st->trace_dir, "/tmp/edge-bench-ort-XXXXXX");
        if (!mkdtemp(st->trace_dir)) return fail("cannot make a folder for the profiler trace");
        char prefix[80];
        snprintf(prefix, sizeof prefix, "%s/ort", st->trace_dir);
        ORT(ORTF(ORT_EnableProfiling, OrtStatusPtr (*)(void *, const char *))(so, prefix), "EnableProfiling");
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        st->profile_start_ns = (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
    }
    ORT(ORTF(ORT_CreateSession, OrtStatusPtr (*)(void *, const char *, void *, void **))(env, model, so, &st->session),
        "CreateSession");
    ORT(ORTF(ORT_GetAllocatorWithDefaultOptions, OrtStatusPtr (*)(void **))(&alloc), "GetAllocatorWithDefaultOptions");
    ORT(ORTF(ORT_CreateCpuMemoryInfo, OrtStatusPtr (*)(int, int, void **))(0, 0, &meminfo), "CreateCpuMemoryInfo");
    size_t n_in = 0, n_out = 0;
    ORT(ORTF(ORT_SessionGetInputCount, OrtStatusPtr (*)(void *, size_t *))(st->session, &n_in), "GetInputCount");
    ORT(ORTF(ORT_SessionGetOutputCount, OrtStatusPtr (*)(void *, size_t *))(st->session, &n_out), "GetOutputCount");
    if (n_in > MAX_IO || n_out > MAX_IO) return fail("more than %d inputs or outputs", MAX_IO);
    rt->n_in = (int)n_in;
    rt->n_out = (int)n_out;
    for (size_t i = 0; i < n_in; i++)
        if (!ort_io(st, 0, i, &rt->in[i], alloc, meminfo)) return false;
    for (size_t i = 0; i < n_out; i++)
        if (!ort_io(st, 1, i, &rt->out[i], alloc, meminfo)) return false;
    return true;
}

static bool ort_infer(runtime_t *rt) {
    ort_state_t *st = rt->state;
    /* Outputs are bound to our buffers: Run writes into them, no per-call allocation. */
    ORT(ORTF(ORT_Run, OrtStatusPtr (*)(void *, const void *, const char *const *, const void *const *, size_t,
                                       const char *const *, size_t, void **))(
            st->session, NULL, st->in_names, (const void *const *)st->in_values, rt->n_in, st->out_names,
            rt->n_out, st->out_values), "Run");
    return true;
}

/* ---- OpenVINO: libopenvino_c.so (headers in the wheel's include/openvino/c/) */

typedef int ov_status_e; /* 0 = OK */
typedef struct { int64_t rank; int64_t *dims; } ov_shape_t;
typedef struct { const char *buildNumber; const char *description; } ov_version_t;
enum { OV_F32 = 4, OV_F16 = 3, OV_I8 = 7, OV_I32 = 9, OV_I64 = 10, OV_U8 = 16 };

static struct {
    ov_status_e (*core_create)(void **);
    ov_status_e (*compile_from_file)(const void *, const char *, const char *, size_t, void **, ...);
    ov_status_e (*create_infer_request)(const void *, void **);
    ov_status_e (*inputs_size)(const void *, size_t *);
    ov_status_e (*outputs_size)(const void *, size_t *);
    ov_status_e (*input_by_index)(const void *, size_t, void **);
    ov_status_e (*output_by_index)(const void *, size_t, void **);
    ov_status_e (*port_get_shape)(const void *, ov_shape_t *);
    ov_status_e (*port_get_element_type)(const void *, int *);
    ov_status_e (*port_get_any_name)(const void *, char **);
    ov_status_e (*tensor_from_host)(int, ov_shape_t, void *, void **);
    ov_status_e (*set_input)(void *, size_t, const void *);
    ov_status_e (*set_output)(void *, size_t, const void *);
    ov_status_e (*infer)(void *);
    ov_status_e (*get_version)(ov_version_t *);
    ov_status_e (*get_property)(const void *, const char *, char **);
    const char *(*last_err)(void);
    ov_status_e (*get_profiling_info)(const void *, void *);
    void (*profiling_info_list_free)(void *);
} ov;

typedef struct {
    int status; /* 0 NOT_RUN, 1 OPTIMIZED_OUT, 2 EXECUTED */
    int64_t real_time; /* microseconds */
    int64_t cpu_time;
    const char *node_name, *exec_type, *node_type;
} ov_profiling_info_t;
typedef struct { ov_profiling_info_t *infos; size_t size; } ov_profiling_info_list_t;

typedef struct { void *request; } ov_state_t;

#define OV(call, what) do { ov_status_e s_ = (call); if (s_) \
    return fail("OpenVINO %s failed (%d): %s", what, s_, ov.last_err ? ov.last_err() : ""); } while (0)

static dtype_t ov_dtype(int t) {
    switch (t) {
    case OV_F32: return DT_F32;
    case OV_I8: return DT_I8;
    case OV_U8: return DT_U8;
    case OV_I32: return DT_I32;
    case OV_I64: return DT_I64;
    case OV_F16: return DT_F16;
    default: return DT_OTHER;
    }
}

static bool ov_load(runtime_t *rt, const char *path, const char *model, int threads) {
    setenv("OPENVINO_TELEMETRY_OPTOUT", "1", 0);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) return fail("cannot load %s: %s", path, dlerror());
    BIND(lib, ov.core_create, "ov_core_create");
    BIND(lib, ov.compile_from_file, "ov_core_compile_model_from_file");
    BIND(lib, ov.create_infer_request, "ov_compiled_model_create_infer_request");
    BIND(lib, ov.inputs_size, "ov_compiled_model_inputs_size");
    BIND(lib, ov.outputs_size, "ov_compiled_model_outputs_size");
    BIND(lib, ov.input_by_index, "ov_compiled_model_input_by_index");
    BIND(lib, ov.output_by_index, "ov_compiled_model_output_by_index");
    BIND(lib, ov.port_get_shape, "ov_const_port_get_shape");
    BIND(lib, ov.port_get_element_type, "ov_port_get_element_type");
    BIND(lib, ov.port_get_any_name, "ov_port_get_any_name");
    BIND(lib, ov.tensor_from_host, "ov_tensor_create_from_host_ptr");
    BIND(lib, ov.set_input, "ov_infer_request_set_input_tensor_by_index");
    BIND(lib, ov.set_output, "ov_infer_request_set_output_tensor_by_index");
    BIND(lib, ov.infer, "ov_infer_request_infer");
    BIND(lib, ov.get_version, "ov_get_openvino_version");
    BIND(lib, ov.get_property, "ov_compiled_model_get_property");
    BIND(lib, ov.last_err, "ov_get_last_err_msg");
    BIND(lib, ov.get_profiling_info, "ov_infer_request_get_profiling_info");
    BIND(lib, ov.profiling_info_list_free, "ov_profiling_info_list_free");
    ov_version_t v;
    OV(ov.get_version(&v), "get_openvino_version");
    snprintf(rt->version, sizeof rt->version, "%s", v.buildNumber);
    ov_state_t *st = calloc(1, sizeof *st);
    rt->state = st;
    void *core = NULL, *compiled = NULL;
    char nthreads[16];
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    OV(ov.core_create(&core), "core_create");
    /* As the Python runner: f32 math (not the CPU's bf16) unless --precision default, latency hint,
       one stream. */
    const char *perf = g_profiling ? "YES" : "NO"; /* PERF_COUNT: the performance counters of --profile */
    if (!strcmp(g_precision, "f32"))
        OV(ov.compile_from_file(core, model, "CPU", 10, &compiled, "INFERENCE_NUM_THREADS", nthreads,
                                "PERFORMANCE_HINT", "LATENCY", "NUM_STREAMS", "1", "INFERENCE_PRECISION_HINT", "f32",
                                "PERF_COUNT", perf),
           "compile_model");
    else
        OV(ov.compile_from_file(core, model, "CPU", 8, &compiled, "INFERENCE_NUM_THREADS", nthreads,
                                "PERFORMANCE_HINT", "LATENCY", "NUM_STREAMS", "1", "PERF_COUNT", perf),
           "compile_model");
    char *precision = NULL;
    if (ov.get_property(compiled, "INFERENCE_PRECISION_HINT", &precision) == 0 && precision)
        snprintf(rt->precision, sizeof rt->precision, "%s", precision);
    OV(ov.create_infer_request(compiled, &st->request), "create_infer_request");
    size_t n_in = 0, n_out = 0;
    OV(ov.inputs_size(compiled, &n_in), "inputs_size");
    OV(ov.outputs_size(compiled, &n_out), "outputs_size");
    if (n_in > MAX_IO || n_out > MAX_IO) return fail("more than %d inputs or outputs", MAX_IO);
    rt->n_in = (int)n_in;
    rt->n_out = (int)n_out;
    for (int k = 0; k < 2; k++) {
        for (size_t i = 0; i < (k ? n_out : n_in); i++) {
            io_t *io = k ? &rt->out[i] : &rt->in[i];
            void *port = NULL, *tensor = NULL;
            ov_shape_t shape;
            int type = 0;
            char *name = NULL;
            OV((k ? ov.output_by_index : ov.input_by_index)(compiled, i, &port), "port_by_index");
            OV(ov.port_get_shape(port, &shape), "port_get_shape");
            OV(ov.port_get_element_type(port, &type), "port_get_element_type");
            if (ov.port_get_any_name(port, &name) == 0) snprintf(io->name, sizeof io->name, "%s", name);
            if (shape.rank > MAX_RANK) return fail("rank %lld > %d", (long long)shape.rank, MAX_RANK);
            io->rank = (int)shape.rank;
            for (int d = 0; d < io->rank; d++) io->shape[d] = shape.dims[d];
            io->dtype = ov_dtype(type);
            io->bytes = elements(io) * DT_SIZE[io->dtype];
            io->buf = aligned(io->bytes);
            OV(ov.tensor_from_host(type, shape, io->buf, &tensor), "tensor_create_from_host_ptr");
            /* Bound once: the request reads our input buffer and writes our output buffer. */
            OV((k ? ov.set_output : ov.set_input)(st->request, i, tensor), "set_tensor_by_index");
        }
    }
    return true;
}

static bool ov_infer(runtime_t *rt) {
    OV(ov.infer(((ov_state_t *)rt->state)->request), "infer");
    return true;
}

/* onnxruntime writes its trace when the session is released: its folder goes out with the JSON and the
   caller (pipeline/native.py) reads it as run_onnxruntime.py's profile() does. */
static bool ort_profile(runtime_t *rt, FILE *o, int calls) {
    ort_state_t *st = rt->state;
    ORTF(ORT_ReleaseSession, void (*)(void *))(st->session);
    st->session = NULL;
    fprintf(o, ", \"profile_trace\": ");
    json_str(o, st->trace_dir);
    fprintf(o, ", \"profile_start_ns_before\": %lld", st->profile_start_ns);
    (void)calls;
    return true;
}

/* The CPU plugin's counters of the last inference, EXECUTED nodes in the compiled graph's order (as
   run_openvino.py's profile()). */
static bool ov_profile(runtime_t *rt, FILE *o, int calls) {
    ov_profiling_info_list_t list = {0};
    OV(ov.get_profiling_info(((ov_state_t *)rt->state)->request, &list), "get_profiling_info");
    fprintf(o, ", \"profile\": [");
    int n = 0;
    for (size_t i = 0; i < list.size; i++) {
        const ov_profiling_info_t *p = &list.infos[i];
        if (p->status != 2) continue;
        fprintf(o, "%s{\"op_type\": ", n++ ? ", " : "");
        json_str(o, p->node_type);
        fprintf(o, ", \"name\": ");
        json_str(o, p->node_name);
        fprintf(o, ", \"exec_type\": ");
        json_str(o, p->exec_type);
        fprintf(o, ", \"calls\": 1, \"ms\": %.6f}", (double)p->real_time / 1e3);
    }
    fputc(']', o);
    ov.profiling_info_list_free(&list);
    (void)calls;
    return true;
}

static runtime_t RUNTIMES[] = {
    {.name = "litert", .load = litert_load, .infer = litert_infer, .profile = litert_profile,
     .profile_start = litert_profile_start},
    {.name = "onnxruntime", .load = ort_load, .infer = ort_infer, .profile = ort_profile},
    {.name = "openvino", .load = ov_load, .infer = ov_infer, .profile = ov_profile},
};

/* ------------------------------------------------------------------ .npy in, .npz out */

typedef struct { float *data; size_t n; int rank; int64_t shape[MAX_RANK]; char name[128]; } samples_t;

/* numpy's little-endian numeric types, each read as float32 (integers above 2^24 lose precision). */
static bool to_floats(const char *descr, const unsigned char *raw, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) {
        const unsigned char *v = raw;
        float x;
        if (!strcmp(descr, "<f4")) { memcpy(&x, v + 4 * i, 4); }
        else if (!strcmp(descr, "<f8")) { double d; memcpy(&d, v + 8 * i, 8); x = (float)d; }
        else if (!strcmp(descr, "<f2")) { _Float16 h; memcpy(&h, v + 2 * i, 2); x = (float)h; }
        else if (!strcmp(descr, "<i8")) { int64_t k; memcpy(&k, v + 8 * i, 8); x = (float)k; }
        else if (!strcmp(descr, "<i4")) { int32_t k; memcpy(&k, v + 4 * i, 4); x = (float)k; }
        else if (!strcmp(descr, "<i2")) { int16_t k; memcpy(&k, v + 2 * i, 2); x = (float)k; }
        else if (!strcmp(descr, "|i1")) { x = (float)(int8_t)v[i]; }
        else if (!strcmp(descr, "|u1") || !strcmp(descr, "|b1")) { x = (float)v[i]; }
        else return false;
        out[i] = x;
    }
    return true;
}

static size_t descr_size(const char *descr) {
    size_t k = (size_t)atoi(descr + 2);
    return strlen(descr) == 3 && (descr[0] == '<' || descr[0] == '|') ? k : 0;
}

/* One .npy array from f at its current position (a file, or a member of an uncompressed .npz). */
static bool read_npy_from(FILE *f, const char *path, samples_t *s) {
    unsigned char head[10];
    bool ok = fread(head, 1, 10, f) == 10 && memcmp(head, "\x93NUMPY", 6) == 0;
    size_t hlen = 0;
    if (ok && head[6] == 1) hlen = head[8] | head[9] << 8;
    else if (ok) {
        unsigned char more[2];
        ok = fread(more, 1, 2, f) == 2;
        hlen = head[8] | head[9] << 8 | (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    char *h = ok && hlen < 65536 ? calloc(1, hlen + 1) : NULL;
    if (!h || fread(h, 1, hlen, f) != hlen) {
        free(h);
        return fail("%s is not a .npy file", path);
    }
    char descr[8] = "";
    char *d = strstr(h, "'descr': '");
    if (d) sscanf(d + 10, "%7[^']", descr);
    size_t item = descr_size(descr);
    if (!item || !strstr(h, "'fortran_order': False")) {
        fail("%s: expected a C-order little-endian float, int or bool array, header %s", path, h);
        free(h);
        return false;
    }
    char *p = strstr(h, "'shape': (");
    s->rank = 0;
    s->n = 1;
    for (p = p ? p + 10 : NULL; p && *p && *p != ')';) {
        char *end;
        long long v = strtoll(p, &end, 10);
        if (end == p) break;
        if (s->rank == MAX_RANK) break;
        s->shape[s->rank++] = v;
        s->n *= (size_t)v;
        p = end;
        while (*p == ',' || *p == ' ') p++;
    }
    free(h);
    if (s->rank < 1) return fail("%s: no sample dimension in its shape", path);
    unsigned char *raw = malloc(s->n * item + 1);
    s->data = malloc(s->n * sizeof(float) + 1);
    size_t got = fread(raw, item, s->n, f);
    if (got != s->n) ok = fail("%s is truncated: %zu of %zu values", path, got, s->n);
    else if (!to_floats(descr, raw, s->n, s->data)) ok = fail("%s: %s values: expected a float, int or bool array", path, descr);
    free(raw);
    return ok;
}

static bool read_npy(const char *path, samples_t *s) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail("cannot open %s: %s", path, strerror(errno));
    bool ok = read_npy_from(f, path, s);
    fclose(f);
    return ok;
}

static uint32_t le(const unsigned char *b, int bytes) {
    uint32_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

/* The arrays of an .npz as np.savez writes it: a zip of stored (uncompressed) <name>.npy members,
   read in file order by their local headers. */
static bool read_npz(const char *path, samples_t *arrays, int *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail("cannot open %s: %s", path, strerror(errno));
    bool ok = true;
    *n = 0;
    unsigned char h[30];
    while (ok && fread(h, 1, 4, f) == 4 && le(h, 4) == 0x04034b50) {
        if (fread(h + 4, 1, 26, f) != 26) { ok = fail("%s is truncated", path); break; }
        unsigned flags = le(h + 6, 2), method = le(h + 8, 2), name_len = le(h + 26, 2), extra = le(h + 28, 2);
        if (method != 0) { ok = fail("%s is compressed: save it with np.savez, not np.savez_compressed", path); break; }
        if (*n == MAX_IO) { ok = fail("%s holds more than %d arrays", path, MAX_IO); break; }
        samples_t *a = &arrays[(*n)++];
        char name[256] = "";
        if (name_len >= sizeof name || fread(name, 1, name_len, f) != name_len || fseek(f, extra, SEEK_CUR)) {
            ok = fail("%s: bad member name", path);
            break;
        }
        size_t len = strlen(name);
        if (len > 4 && !strcmp(name + len - 4, ".npy")) name[len - 4] = 0;
        snprintf(a->name, sizeof a->name, "%s", name);
        ok = read_npy_from(f, path, a);
        if (ok && (flags & 8)) { /* a data descriptor follows the data: its own signature, crc, sizes */
            unsigned char dd[4];
            ok = fread(dd, 1, 4, f) == 4 && fseek(f, le(dd, 4) == 0x08074b50 ? 12 : 8, SEEK_CUR) == 0;
        }
    }
    fclose(f);
    if (ok && !*n) return fail("%s holds no arrays: is it an .npz from np.savez?", path);
    return ok;
}

static uint32_t crc32(const unsigned char *p, size_t n, uint32_t c) {
    c = ~c;
    while (n--) {
        c ^= *p++;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
}

static void put16(unsigned char *b, unsigned v) { b[0] = v & 255; b[1] = v >> 8 & 255; }
static void put32(unsigned char *b, uint32_t v) { put16(b, v & 0xffff); put16(b + 2, v >> 16); }

/* An uncompressed zip of output_<i>.npy members, what np.savez writes and np.load reads. */
static bool write_npz(const char *path, int n, float **arrays, const int64_t (*shapes)[MAX_RANK + 1], const int *ranks) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return fail("cannot write %s: %s", tmp, strerror(errno));
    unsigned char central[MAX_IO][46 + 32];
    size_t central_len[MAX_IO];
    uint32_t offset = 0;
    for (int i = 0; i < n; i++) {
        char header[256], shape[160] = "";
        size_t count = 1;
        for (int d = 0; d < ranks[i]; d++) {
            char dim[24];
            snprintf(dim, sizeof dim, d ? ", %lld" : "%lld", (long long)shapes[i][d]);
            strcat(shape, dim);
            count *= (size_t)shapes[i][d];
        }
        if (ranks[i] == 1) strcat(shape, ","); /* a 1-tuple: (a,) */
        int hl = snprintf(header, sizeof header, "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }", shape);
        int total = 10 + hl + 1;
        int pad = (64 - total % 64) % 64;
        unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
        put16(pre + 8, (unsigned)(hl + pad + 1));
        unsigned char npyhead[320];
        memcpy(npyhead, pre, 10);
        memcpy(npyhead + 10, header, hl);
        memset(npyhead + 10 + hl, ' ', pad);
        npyhead[10 + hl + pad] = '\n';
        size_t head_len = 10 + hl + pad + 1, data_len = count * sizeof(float);
        uint32_t crc = crc32(npyhead, head_len, 0);
        crc = crc32((const unsigned char *)arrays[i], data_len, crc);
        char name[32];
        int name_len = snprintf(name, sizeof name, "output_%d.npy", i);
        uint32_t size = (uint32_t)(head_len + data_len);
        unsigned char local[30] = {'P', 'K', 3, 4, 20};
        put32(local + 14, crc);
        put32(local + 18, size);
        put32(local + 22, size);
        put16(local + 26, name_len);
        fwrite(local, 1, 30, f);
        fwrite(name, 1, name_len, f);
        fwrite(npyhead, 1, head_len, f);
        fwrite(arrays[i], 1, data_len, f);
        unsigned char *c = central[i];
        memset(c, 0, 46);
        c[0] = 'P'; c[1] = 'K'; c[2] = 1; c[3] = 2; c[4] = 20; c[6] = 20;
        put32(c + 16, crc);
        put32(c + 20, size);
        put32(c + 24, size);
        put16(c + 28, name_len);
        put32(c + 42, offset);
        memcpy(c + 46, name, name_len);
        central_len[i] = 46 + name_len;
        offset += 30 + name_len + size;
    }
    uint32_t cd_size = 0;
    for (int i = 0; i < n; i++) {
        fwrite(central[i], 1, central_len[i], f);
        cd_size += central_len[i];
    }
    unsigned char end[22] = {'P', 'K', 5, 6};
    put16(end + 8, n);
    put16(end + 10, n);
    put32(end + 12, cd_size);
    put32(end + 16, offset);
    fwrite(end, 1, 22, f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) return fail("cannot write %s: %s", path, strerror(errno));
    return true;
}

/* ------------------------------------------------------------------ samples <-> runtime buffers */

static float half_to_float(uint16_t h) {
    uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 31, man = h & 1023;
    float v = exp == 0 ? ldexpf((float)man, -24) : exp == 31 ? (man ? NAN : INFINITY) : ldexpf((float)(man | 1024), (int)exp - 25);
    return sign ? -v : v;
}

/* As runner_common.one_call: quantized like runner_common.quantize (round half to even, then clip)
   for int8/uint8, numpy's astype for the other types (integers truncate toward zero). One sample of
   input t, written to dst in the input's own type. */
static void to_input(const float *x, const io_t *t, void *dst) {
    size_t n = elements(t);
    switch (t->dtype) {
    case DT_F32: memcpy(dst, x, n * sizeof(float)); return;
    case DT_I32: for (size_t i = 0; i < n; i++) ((int32_t *)dst)[i] = (int32_t)x[i]; return;
    case DT_I64: for (size_t i = 0; i < n; i++) ((int64_t *)dst)[i] = (int64_t)x[i]; return;
    case DT_F16: for (size_t i = 0; i < n; i++) ((_Float16 *)dst)[i] = (_Float16)x[i]; return;
    default: break;
    }
    double lo = t->dtype == DT_I8 ? -128 : 0, hi = t->dtype == DT_I8 ? 127 : 255;
    for (size_t i = 0; i < n; i++) {
        float q = nearbyintf(x[i] / (float)t->scale) + (float)t->zero_point;
        q = q < lo ? (float)lo : q > hi ? (float)hi : q;
        if (t->dtype == DT_I8) ((int8_t *)dst)[i] = (int8_t)q;
        else ((uint8_t *)dst)[i] = (uint8_t)q;
    }
}

static void from_output(const io_t *t, float *y) {
    size_t n = elements(t);
    for (size_t i = 0; i < n; i++) {
        float v;
        switch (t->dtype) {
        case DT_F32: v = ((float *)t->buf)[i]; break;
        case DT_I8: v = (float)((int8_t *)t->buf)[i]; break;
        case DT_U8: v = (float)((uint8_t *)t->buf)[i]; break;
        case DT_I32: v = (float)((int32_t *)t->buf)[i]; break;
        case DT_I64: v = (float)((int64_t *)t->buf)[i]; break;
        case DT_F16: v = half_to_float(((uint16_t *)t->buf)[i]); break;
        default: v = NAN;
        }
        if ((t->dtype == DT_I8 || t->dtype == DT_U8) && t->scale > 0)
            v = (v - (float)t->zero_point) * (float)t->scale;
        y[i] = v;
    }
}

/* ------------------------------------------------------------------ timing */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void mark(long magic) { syscall(SYS_lseek, -1L, magic, (long)SEEK_SET); } /* 64-bit registers: the plugin reads fd -1 */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* numpy's default (linear) percentile of sorted values */
static double percentile(const double *v, size_t n, double p) {
    double r = p / 100.0 * (double)(n - 1);
    size_t lo = (size_t)floor(r), hi = (size_t)ceil(r);
    return v[lo] + (v[hi] - v[lo]) * (r - (double)lo);
}

/* Every sample of every input in the input's own type, made before any timing, as runner_common's
   _prepare: feeds[k] holds n samples of rt->in[k].bytes. */
static unsigned char *prepare(const runtime_t *rt, const samples_t *in, int k, size_t n) {
    const io_t *t = &rt->in[k];
    unsigned char *feed = malloc(n * t->bytes + 1);
    for (size_t i = 0; i < n; i++) to_input(in[k].data + i * elements(t), t, feed + i * t->bytes);
    return feed;
}

/* Sample i is copied into the runtime's input buffers inside the timed call and the outputs copied out
   in their own type, as an application must (runner_common times set + invoke + get); float outputs
   for the .npz are made after, by from_output. */
static bool one_inference(runtime_t *rt, unsigned char *const *feeds, size_t n, size_t i, void **raw) {
    for (int k = 0; k < rt->n_in; k++) memcpy(rt->in[k].buf, feeds[k] + (i % n) * rt->in[k].bytes, rt->in[k].bytes);
    if (!rt->infer(rt)) return false;
    for (int o = 0; o < rt->n_out; o++) memcpy(raw[o], rt->out[o].buf, rt->out[o].bytes);
    return true;
}

/* ------------------------------------------------------------------ conditions */

static void cpu_model(char *out, size_t len) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    snprintf(out, len, "unknown");
    while (f && fgets(line, sizeof line, f)) {
        char *colon = strchr(line, ':');
        if (!colon) continue;
        if (!strncasecmp(line, "model name", 10) || !strncasecmp(line, "hardware", 8) ||
            !strncasecmp(line, "cpu model", 9)) {
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t') v++;
            v[strcspn(v, "\n")] = '\0';
            snprintf(out, len, "%s", v);
            break;
        }
    }
    if (f) fclose(f);
}

static double peak_rss_mb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double mb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) mb = atof(line + 6) / 1024.0;
    if (f) fclose(f);
    return mb;
}

static void print_io(FILE *o, const char *key, const io_t *t, int n) {
    fprintf(o, ", \"%s\": [", key);
    for (int i = 0; i < n; i++) {
        fprintf(o, "%s{\"name\": ", i ? ", " : "");
        json_str(o, t[i].name);
        fprintf(o, ", \"shape\": [");
        for (int d = 0; d < t[i].rank; d++) fprintf(o, "%s%lld", d ? ", " : "", (long long)t[i].shape[d]);
        fprintf(o, "], \"dtype\": \"%s\", \"scale\": %.9g, \"zero_point\": %lld}", DT_NAME[t[i].dtype], t[i].scale,
                (long long)t[i].zero_point);
    }
    fputc(']', o);
}

/* ------------------------------------------------------------------ test vectors (a release bundle's run.sh) */

/* Every output against DIR/output_<i>.npy (float32, what the artifact answered at release), within
   the i-th of the comma-separated tolerances: a board replays its test vectors with no Python. */
static bool check_vectors(const char *dir, const char *atol, int n_out, float **arrays, size_t n, const io_t *out,
                          double *diff) {
    const char *tol = atol;
    for (int o = 0; o < n_out; o++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/output_%d.npy", dir, o);
        samples_t want = {0};
        if (!read_npy(path, &want)) return false;
        size_t per = elements(&out[o]);
        if (want.n != per * n) return fail("%s holds %zu values, the outputs %zu", path, want.n, per * n);
        diff[o] = 0;
        for (size_t i = 0; i < want.n; i++) {
            double d = fabs((double)arrays[o][i] - (double)want.data[i]);
            if (!(d <= diff[o])) diff[o] = d; /* NaN counts as worst */
        }
        free(want.data);
        double limit = atof(tol);
        if (!(diff[o] <= limit))
            return fail("test vector output_%d differs by %.4g > %.4g", o, diff[o], limit);
        const char *comma = strchr(tol, ',');
        if (comma) tol = comma + 1;
    }
    return true;
}

/* One array of samples per model input, in the model's order, as runner_common.load_inputs: an .npy
   for a single input; an .npz with an array per input name, or as many arrays as inputs, in order. */
static bool read_inputs(const char *path, runtime_t *rt, samples_t *in, long limit) {
    size_t len = strlen(path);
    if (len < 4 || strcmp(path + len - 4, ".npz")) {
        if (rt->n_in != 1) return fail("the model has %d inputs: give an .npz with one array per input name", rt->n_in);
        if (!read_npy(path, &in[0])) return false;
    } else {
        samples_t got[MAX_IO] = {0};
        int n = 0, named = 0;
        if (!read_npz(path, got, &n)) return false;
        for (int k = 0; k < rt->n_in; k++)
            for (int j = 0; j < n; j++)
                if (!strcmp(got[j].name, rt->in[k].name)) {
                    in[k] = got[j];
                    named++;
                    break;
                }
        if (named != rt->n_in) {
            if (n != rt->n_in) {
                char names[1024] = "";
                for (int k = 0; k < rt->n_in; k++)
                    snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", k ? ", " : "", rt->in[k].name);
                return fail("%s holds %d arrays but the model's inputs are [%s]", path, n, names);
            }
            for (int k = 0; k < n; k++) in[k] = got[k];
        }
    }
    for (int k = 0; k < rt->n_in; k++) {
        if (limit > 0 && limit < in[k].shape[0]) in[k].shape[0] = limit;
        if (in[k].shape[0] != in[0].shape[0])
            return fail("%s: the arrays hold different numbers of samples", path);
        if (in[k].shape[0] == 0) return fail("%s holds no samples", path);
        size_t per = 1;
        for (int d = 1; d < in[k].rank; d++) per *= (size_t)in[k].shape[d];
        if (per != elements(&rt->in[k]))
            return fail("a sample of input %s has %zu values, the model's input %zu", rt->in[k].name, per,
                        elements(&rt->in[k]));
    }
    return true;
}

/* ------------------------------------------------------------------ main */

typedef struct {
    const char *runtime, *lib, *model, *inputs, *outputs, *version, *expect, *atol, *precision, *delegate;
    int bench, profile, threads, warmup, runs, sections;
    long limit;
    double min_seconds;
} args_t;

static bool parse_args(int argc, char **argv, args_t *a) {
    *a = (args_t){.threads = 1, .warmup = 10, .runs = 100, .min_seconds = 1.0, .sections = 1, .version = ""};
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--bench")) { a->bench = 1; continue; }
        if (!strcmp(k, "--profile")) { a->profile = 1; continue; }
        if (k[0] != '-' || k[1] != '-') {
            if (a->model) return fail("unexpected argument %s", k);
            a->model = k;
            continue;
        }
        if (!v) return fail("%s needs a value", k);
        i++;
        if (!strcmp(k, "--runtime")) a->runtime = v;
        else if (!strcmp(k, "--lib")) a->lib = v;
        else if (!strcmp(k, "--inputs")) a->inputs = v;
        else if (!strcmp(k, "--outputs")) a->outputs = v;
        else if (!strcmp(k, "--runtime-version")) a->version = v;
        else if (!strcmp(k, "--expect")) a->expect = v;
        else if (!strcmp(k, "--atol")) a->atol = v;
        else if (!strcmp(k, "--threads")) a->threads = atoi(v);
        else if (!strcmp(k, "--warmup")) a->warmup = atoi(v);
        else if (!strcmp(k, "--runs")) a->runs = atoi(v);
        else if (!strcmp(k, "--sections")) a->sections = atoi(v);
        else if (!strcmp(k, "--limit")) a->limit = atol(v);
        else if (!strcmp(k, "--min-seconds")) a->min_seconds = atof(v);
        else if (!strcmp(k, "--precision")) a->precision = v;
        else if (!strcmp(k, "--delegate")) a->delegate = v;
        else return fail("unknown option %s", k);
    }
    if (!a->model) return fail("no model given");
    if (!a->runtime || !a->lib) return fail("--runtime and --lib are required");
    if (a->threads < 1 || a->sections < 1 || a->runs < 1 || a->warmup < 0) return fail("bad numeric option");
    if (a->bench && !a->inputs) return fail("--bench needs --inputs: latency is measured on real samples");
    if (a->expect && (!a->inputs || !a->atol)) return fail("--expect needs --inputs and --atol");
    if (a->precision && (strcmp(a->runtime, "openvino") || (strcmp(a->precision, "f32") && strcmp(a->precision, "default"))))
        return fail("--precision is OpenVINO's: f32 or default");
    if (a->delegate && (strcmp(a->runtime, "litert") || strcmp(a->delegate, "xnnpack")))
        return fail("--delegate: the native runner runs LiteRT's CompiledModel API, which has XNNPACK only "
                    "(the Python runner has --delegate none)");
    if (a->precision) g_precision = a->precision;
    return true;
}

int main(int argc, char **argv) {
    args_t a;
    runtime_t *rt = NULL;
    samples_t in[MAX_IO] = {0};
    double load_ms = -1, first_ms = -1, *lat = NULL;
    size_t n_lat = 0, predicted = 0;
    size_t section_runs[64] = {0};
    bool ok = parse_args(argc, argv, &a);
    if (ok) {
        for (size_t i = 0; i < sizeof RUNTIMES / sizeof *RUNTIMES; i++)
            if (!strcmp(RUNTIMES[i].name, a.runtime)) rt = &RUNTIMES[i];
        ok = rt ? true : fail("unknown runtime %s: litert, onnxruntime or openvino", a.runtime);
    }
    if (ok) {
        if (a.version[0]) snprintf(rt->version, sizeof rt->version, "%s", a.version);
        double t0 = now_s();
        ok = rt->load(rt, a.lib, a.model, a.threads);
        load_ms = (now_s() - t0) * 1e3;
        for (int k = 0; ok && k < rt->n_in; k++)
            if (rt->in[k].dtype == DT_OTHER) ok = fail("input %s has a type the native runner cannot feed", rt->in[k].name);
    }
    if (ok && a.inputs) ok = read_inputs(a.inputs, rt, in, a.limit);
    size_t n_samples = ok && a.inputs ? (size_t)in[0].shape[0] : 0;
    void *raw[MAX_IO] = {0};
    unsigned char *feeds[MAX_IO] = {0};
    for (int o = 0; ok && rt && o < rt->n_out; o++) raw[o] = malloc(rt->out[o].bytes + 4);
    for (int k = 0; n_samples && k < rt->n_in; k++) feeds[k] = prepare(rt, in, k, n_samples);
    double vec_diff[MAX_IO] = {0};
    bool vectors_checked = false;
    if (ok && (a.outputs || a.expect) && n_samples) {
        float *arrays[MAX_IO];
        int64_t shapes[MAX_IO][MAX_RANK + 1];
        int ranks[MAX_IO];
        for (int o = 0; o < rt->n_out; o++) {
            size_t per = elements(&rt->out[o]);
            arrays[o] = malloc(per * n_samples * sizeof(float) + 4);
            /* (N * batch, ...): the samples stacked along the output's first axis, as the runner's
               np.concatenate does */
            ranks[o] = rt->out[o].rank ? rt->out[o].rank : 1;
            shapes[o][0] = (int64_t)n_samples * (rt->out[o].rank ? rt->out[o].shape[0] : 1);
            for (int d = 1; d < rt->out[o].rank; d++) shapes[o][d] = rt->out[o].shape[d];
        }
        for (size_t i = 0; ok && i < n_samples; i++) {
            ok = one_inference(rt, feeds, n_samples, i, raw);
            for (int o = 0; ok && o < rt->n_out; o++) from_output(&rt->out[o], arrays[o] + i * elements(&rt->out[o]));
        }
        if (ok && a.outputs) ok = write_npz(a.outputs, rt->n_out, arrays, (const int64_t (*)[MAX_RANK + 1])shapes, ranks);
        if (ok) predicted = n_samples;
        if (ok && a.expect) {
            ok = check_vectors(a.expect, a.atol, rt->n_out, arrays, n_samples, rt->out, vec_diff);
            vectors_checked = true;
        }
    }
    if (ok && a.bench) {
        double t0 = now_s();
        ok = one_inference(rt, feeds, n_samples, 0, raw);
        first_ms = (now_s() - t0) * 1e3;
        for (int i = 0; ok && i < a.warmup; i++)
            ok = one_inference(rt, feeds, n_samples, (size_t)i + 1, raw);
        size_t cap = 1024;
        lat = malloc(cap * sizeof(double));
        for (int sec = 0; ok && sec < a.sections && sec < 64; sec++) {
            double start = now_s();
            size_t i = 0;
            n_lat = 0; /* the statistics are the last section's, as each pass of emu_sections.py reports */
            mark(MARK_START);
            while (ok && (i < (size_t)a.runs || now_s() - start < a.min_seconds)) {
                double t = now_s();
                ok = one_inference(rt, feeds, n_samples, i, raw);
                double dt = now_s() - t;
                if (n_lat == cap) lat = realloc(lat, (cap *= 2) * sizeof(double));
                lat[n_lat++] = dt * 1e3;
                i++;
            }
            mark(MARK_STOP);
            section_runs[sec] = i;
        }
    }
    /* --profile: a second session with the runtime's profiler on, PROFILE_CALLS inferences after one untimed
       (runner_common._profile); its op records are printed with the JSON. */
    bool profiled = false;
    char profile_error[sizeof g_error] = "";
    double rss_mb = peak_rss_mb(); /* the row's memory: before the second, profiled session */
    if (ok && a.bench && a.profile) {
        if (!rt->profile) {
            snprintf(profile_error, sizeof profile_error, "the native runner has no op profiler for %s", rt->name);
        } else {
            /* an empty marked section first: guest_trace.c's guest memory stops at the first profile start
               marker, before this second session loads (the row's memory is the timed session's) */
            mark(MARK_PROFILE_START);
            mark(MARK_PROFILE_STOP);
            g_profiling = true;
            bool pok = rt->load(rt, a.lib, a.model, a.threads) && one_inference(rt, feeds, n_samples, 0, raw);
            if (pok && rt->profile_start) pok = rt->profile_start(rt);
            mark(MARK_PROFILE_START);
            for (int i = 0; pok && i < PROFILE_CALLS; i++) {
                mark(MARK_PROFILE_CALL);
                pok = one_inference(rt, feeds, n_samples, (size_t)i, raw);
            }
            mark(MARK_PROFILE_STOP);
            if (pok) profiled = true;
            else snprintf(profile_error, sizeof profile_error, "%s", g_error);
            g_error[0] = 0;
        }
    }

    /* One JSON line, the fields runner_common writes. */
    FILE *o = stdout;
    char cpu[256];
    struct utsname un;
    uname(&un);
    cpu_model(cpu, sizeof cpu);
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    double load1 = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &load1) != 1) load1 = -1;
        fclose(la);
    }
    fprintf(o, "\n{\"ok\": %s, \"harness\": \"native\", \"runtime\": ", ok ? "true" : "false");
    json_str(o, rt ? rt->name : (a.runtime ? a.runtime : ""));
    fprintf(o, ", \"model\": ");
    json_str(o, a.model);
    if (rt) {
        fprintf(o, ", \"runtime_version\": ");
        json_str(o, rt->version);
    }
    if (load_ms >= 0) fprintf(o, ", \"load_ms\": %.6f", load_ms);
    if (rt && rt->n_in) {
        print_io(o, "inputs", rt->in, rt->n_in);
        print_io(o, "outputs", rt->out, rt->n_out);
        if (rt->delegate) fprintf(o, ", \"delegate\": \"%s\"", rt->delegate);
        if (rt->precision[0]) fprintf(o, ", \"precision\": \"%s\"", rt->precision);
    }
    fprintf(o, ", \"conditions\": {\"threads\": %d, \"batch\": 1, \"cpu\": ", a.threads);
    json_str(o, cpu);
    fprintf(o, ", \"cpus_available\": %d, \"loadavg_1m\": %.2f, \"os\": \"%s %s\", \"arch\": \"%s\", \"python\": null",
            cpus, load1, un.sysname, un.release, un.machine);
    if (rt && rt->delegate) fprintf(o, ", \"delegate\": \"%s\"", rt->delegate);
    fputc('}', o);
    if (n_samples) {
        fprintf(o, ", \"input\": {\"file\": ");
        const char *base = strrchr(a.inputs, '/');
        json_str(o, base ? base + 1 : a.inputs);
        fprintf(o, ", \"samples\": %zu, \"sample_shape\": [", n_samples);
        for (int d = 1; d < in[0].rank; d++) fprintf(o, "%s%lld", d > 1 ? ", " : "", (long long)in[0].shape[d]);
        fprintf(o, "], \"dtype\": \"float32\"}");
    }
    if (predicted) fprintf(o, ", \"predicted\": %zu", predicted);
    if (vectors_checked) {
        fprintf(o, ", \"test_vectors\": {\"ok\": %s, \"vectors\": %zu, \"max_abs_diff\": [", ok ? "true" : "false",
                n_samples);
        for (int i = 0; i < rt->n_out; i++) fprintf(o, "%s%.9g", i ? ", " : "", vec_diff[i]);
        fprintf(o, "]}");
    }
    if (first_ms >= 0) fprintf(o, ", \"first_inference_ms\": %.6f", first_ms);
    if (n_lat) {
        double sum = 0, sq = 0;
        for (size_t i = 0; i < n_lat; i++) sum += lat[i];
        double mean = sum / (double)n_lat;
        for (size_t i = 0; i < n_lat; i++) sq += (lat[i] - mean) * (lat[i] - mean);
        qsort(lat, n_lat, sizeof(double), cmp_double);
        fprintf(o, ", \"latency\": {\"min_ms\": %.9g, \"p50_ms\": %.9g, \"p90_ms\": %.9g, \"p99_ms\": %.9g, "
                   "\"mean_ms\": %.9g, \"std_ms\": %.9g, \"max_ms\": %.9g, \"throughput_per_s\": %.9g, \"runs\": %zu}",
                lat[0], percentile(lat, n_lat, 50), percentile(lat, n_lat, 90), percentile(lat, n_lat, 99), mean,
                sqrt(sq / (double)n_lat), lat[n_lat - 1], mean > 0 ? 1e3 / mean : 0.0, n_lat);
        fprintf(o, ", \"warmup\": %d, \"input_samples\": %zu, \"sections\": [", a.warmup, n_samples);
        for (int sec = 0; sec < a.sections && sec < 64; sec++) fprintf(o, "%s%zu", sec ? ", " : "", section_runs[sec]);
        fputc(']', o);
    }
    if (profiled && rt->profile(rt, o, PROFILE_CALLS)) fprintf(o, ", \"profile_calls\": %d", PROFILE_CALLS);
    if (profile_error[0]) {
        fprintf(o, ", \"profile_error\": ");
        json_str(o, profile_error);
    }
    if (!ok) {
        fprintf(o, ", \"error\": ");
        json_str(o, g_error);
    }
    fprintf(o, ", \"peak_rss_mb\": %.3f}\n", rss_mb);
    fflush(o);
    return ok ? 0 : 1;
}
