/* libcufft.so.11 forwarding shim: ASTRA's PyPI wheel needs CUDA 12's cuFFT (soname libcufft.so.11, 5 functions);
   the device image only has CUDA 13's (libcufft.so.12). Each call is forwarded via dlopen/dlsym. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
static void *lib;
static void *sym(const char *name) {
    if (!lib) {
        const char *path = getenv("CUFFT12_LIB");
        lib = dlopen(path ? path : "libcufft.so.12", RTLD_NOW | RTLD_GLOBAL);
        if (!lib) { fprintf(stderr, "cufft shim: %s\n", dlerror()); abort(); }
    }
    void *f = dlsym(lib, name);
    if (!f) { fprintf(stderr, "cufft shim: no %s\n", name); abort(); }
    return f;
}
typedef int (*plan1d_t)(int *, int, int, int);
typedef int (*exec_t)(int, void *, void *);
typedef int (*destroy_t)(int);
typedef int (*setstream_t)(int, void *);
int cufftPlan1d(int *plan, int nx, int type, int batch) { return ((plan1d_t)sym("cufftPlan1d"))(plan, nx, type, batch); }
int cufftExecR2C(int plan, void *in, void *out) { return ((exec_t)sym("cufftExecR2C"))(plan, in, out); }
int cufftExecC2R(int plan, void *in, void *out) { return ((exec_t)sym("cufftExecC2R"))(plan, in, out); }
int cufftDestroy(int plan) { return ((destroy_t)sym("cufftDestroy"))(plan); }
int cufftSetStream(int plan, void *stream) { return ((setstream_t)sym("cufftSetStream"))(plan, stream); }
