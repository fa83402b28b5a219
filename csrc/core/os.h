/* os.h - the platform layer's interface (os.c). The core's system calls go
 * through it, but for the few made where only async-signal-safe code may
 * run: the barrier's futex and sigaction (barrier.c), the fork handlers'
 * getpid, signal mask and futex (fork.c, trigger.c), each noted where it is
 * made. Every function returns failure to its caller, never aborts.
 * Included by internal.h; nothing here depends on the heap. */
#ifndef MESH_OS_H
#define MESH_OS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- os.c: the only file that makes system calls -------------------- */
int _mesh_os_memfd(void); /* close-on-exec, at a high descriptor number */
int _mesh_os_memfd_named(const char *name); /* the same, another name */
int _mesh_os_fd_identity(int fd, uint64_t id[2]); /* (device, inode) */
uint64_t _mesh_os_fd_blocks(int fd);               /* 512-byte blocks the file holds, 0 on error */
int _mesh_os_map_anon_fixed(void *addr, size_t len);
int _mesh_os_remove(void *addr, size_t len);              /* frees the pages behind a mapping */
void _mesh_os_block_async_signals(sigset_t *old); /* all but SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS */
void _mesh_os_restore_signals(const sigset_t *old);
void *_mesh_os_reserve(size_t size, int fd);
/* The same, followed by guard bytes of PROT_NONE address space (never
 * touched, never backed) that nothing else can be mapped into. */
void *_mesh_os_reserve_guarded(size_t size, size_t guard, int fd);
int _mesh_os_map_fixed(void *addr, size_t len, int fd, size_t off);
int _mesh_os_map_frozen(void *addr, size_t len, int fd, size_t off); /* MAP_PRIVATE, read-only */
int _mesh_os_map_at(void *addr, size_t len); /* MAP_FIXED_NOREPLACE: -1 with EEXIST if taken */
int _mesh_os_punch(int fd, void *addr, size_t off, size_t len);
void *_mesh_os_alloc(size_t size);
void *_mesh_os_map_anon(size_t size); /* committed private memory (a direct block) */
void *_mesh_os_remap(void *p, size_t old_len, size_t new_len); /* mremap, may move; NULL on failure */
void _mesh_os_free(void *p, size_t size);
int _mesh_os_ftruncate(int fd, size_t size);
long long _mesh_os_seek_data(int fd, size_t off);
long long _mesh_os_seek_hole(int fd, size_t off);
int _mesh_os_close(int fd);
ssize_t _mesh_os_read(int fd, void *buf, size_t len);
int _mesh_os_write_all(int fd, const void *buf, size_t len);
int _mesh_os_pwrite_all(int fd, const void *buf, size_t len, size_t off);
uint64_t _mesh_os_random(void);
uint64_t _mesh_os_now_ns(void);
uint64_t _mesh_os_thread_cpu_ns(void);
uint64_t _mesh_os_process_cpu_ns(void); /* every thread of the process */
const char *_mesh_os_getenv(const char *name); /* NULL in secure-execution mode */
bool _mesh_os_secure(void);
size_t _mesh_os_as_limit(void);                /* RLIMIT_AS, SIZE_MAX if none */
void _mesh_os_abort(void) __attribute__((noreturn));
void *_mesh_os_move_over(void *src, size_t len, void *dst); /* mremap(MREMAP_FIXED) */
int _mesh_os_protect_read(void *addr, size_t len);
int _mesh_os_protect_rw(void *addr, size_t len);   /* raw mprotect, read-write */
void _mesh_os_loader_text(uintptr_t *lo, uintptr_t *len); /* the dynamic loader's code range, or 0, 0 */
int _mesh_os_advise_fork(void *addr, size_t len, bool dontfork); /* MADV_DONTFORK / MADV_DOFORK */
long _mesh_os_max_map_count(void);
/* Tests only: the nth arena mapping call from now on (MAP_FIXED mmap,
 * mprotect) and the count - 1 after it fail with ENOMEM, each after
 * calling at_failure (if not NULL); nth 0 disarms. */
void _mesh_os_fail_mappings(unsigned nth, unsigned count, void (*at_failure)(void));
long _mesh_os_count_maps(void);
void _mesh_os_after_fork_child(void); /* descriptors the child must not share */
/* The CPU has the popcnt instruction (x86-64; cpuid, read once at init
 * by _mesh_os_cpu_init): mesh_popcount64 is then one instruction. */
extern bool _mesh_os_has_popcnt;
void _mesh_os_cpu_init(void);

#endif
