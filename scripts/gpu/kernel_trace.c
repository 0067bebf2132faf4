// A CUPTI injection library: records every kernel, memcpy and memset the process runs on the
// GPU (also those inside CUDA graphs) with its start and end on the device's clock, and writes
// one tab-separated line each to $KTRACE_OUT at exit. The CUDA driver loads it at cuInit when
// CUDA_INJECTION64_PATH names it; no change to the program traced.
//
// Build (stage.sh does): gcc -O2 -shared -fPIC kernel_trace.c -I<cupti include> -I<cuda include>
//   -L<dir of libcupti.so.13> -l:libcupti.so.13 -Wl,-rpath,'$ORIGIN' -o libkernel_trace.so
// Columns: kind, start_ns, end_ns, stream, graph_id, grid x/y/z, block x/y/z, registers, name.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>

static FILE *out;

static void CUPTIAPI give_buffer(uint8_t **buffer, size_t *size, size_t *max_records) {
  *size = 16 << 20;
  *buffer = aligned_alloc(ACTIVITY_RECORD_ALIGNMENT, *size);
  *max_records = 0;
}

static void CUPTIAPI take_buffer(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size,
                                 size_t valid) {
  (void)ctx; (void)stream; (void)size;
  CUpti_Activity *rec = NULL;
  while (out && cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_KERNEL:
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
      CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)rec;
      fprintf(out, "K\t%llu\t%llu\t%u\t%u\t%d\t%d\t%d\t%d\t%d\t%d\t%u\t%s\n",
              (unsigned long long)k->start, (unsigned long long)k->end, k->streamId, k->graphId,
              k->gridX, k->gridY, k->gridZ, k->blockX, k->blockY, k->blockZ,
              (unsigned)k->registersPerThread, k->name ? k->name : "?");
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)rec;
      fprintf(out, "C\t%llu\t%llu\t%u\t%u\t%llu\t0\t0\t0\t0\t0\t0\tmemcpy%u\n",
              (unsigned long long)m->start, (unsigned long long)m->end, m->streamId, m->graphId,
              (unsigned long long)m->bytes, (unsigned)m->copyKind);
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)rec;
      fprintf(out, "S\t%llu\t%llu\t%u\t%u\t%llu\t0\t0\t0\t0\t0\t0\tmemset\n",
              (unsigned long long)m->start, (unsigned long long)m->end, m->streamId, m->graphId,
              (unsigned long long)m->bytes);
      break;
    }
    default:
      break;
    }
  }
  free(buffer);
}

static void finish(void) {
  cuptiActivityFlushAll(1);
  if (out) fclose(out);
  out = NULL;
}

int InitializeInjection(void) {
  const char *path = getenv("KTRACE_OUT");
  out = fopen(path ? path : "ktrace.tsv", "w");
  if (!out) return 0;
  if (cuptiActivityRegisterCallbacks(give_buffer, take_buffer) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    fprintf(stderr, "kernel_trace: CUPTI activity could not be enabled\n");
    return 0;
  }
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  atexit(finish);
  return 1;
}
