/* init.c - one-time process initialisation.
 *
 * Runs on the first allocation (or a library constructor): options from
 * the environment, size classes, the arena, the thread-heap key, then the
 * fork handlers. Nothing before state 2 may allocate; pthread_atfork might,
 * so it is registered after the state is published and the init lock is
 * released (its allocation then takes the normal path).
 */
#include "internal.h"

_Atomic int _mesh_init_state;
uintptr_t _mesh_ldso_lo, _mesh_ldso_len;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int fork_registered;

void _mesh_init_slow(void) {
  if (mesh_load_acquire(&_mesh_init_state) != 2) {
    pthread_mutex_lock(&init_lock);
    if (mesh_load_acquire(&_mesh_init_state) == 0) {
      mesh_store_relaxed(&_mesh_init_state, 1);
      _mesh_os_cpu_init();
      _mesh_os_loader_text(&_mesh_ldso_lo, &_mesh_ldso_len);
      _mesh_options_init();
      _mesh_stats_page_init();
      _mesh_size_classes_init();
      if (!_mesh_arena_init())
        _mesh_warning("cannot reserve any arena: every allocation will fail with ENOMEM");
      /* the free key (types.h): before any slot can enter a vector; never 0,
       * the value a pop stores and untouched pages hold */
      do _mesh_arena.free_key = _mesh_os_random(); while (_mesh_arena.free_key == 0);
      _mesh_thread_heaps_init();
      if (_mesh_arena.meshable) {
        _mesh_mesher_init();
        _mesh_meshing_init();
      }
      _mesh_triggers_init();
      mesh_store_release(&_mesh_init_state, 2);
    }
    pthread_mutex_unlock(&init_lock);
  }
  if (mesh_load_relaxed(&fork_registered) == 0 && mesh_exchange_acq_rel(&fork_registered, 1) == 0) {
    _mesh_fork_register();
    _mesh_mesher_start_background(); /* pthread_create may allocate: init is done */
  }
}
