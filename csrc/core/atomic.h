/* atomic.h - C11 atomics under names that carry their memory order.
 *
 * Every shared word in the core is _Atomic so that ThreadSanitizer sees the
 * intended synchronisation; relaxed loads/stores compile to plain moves on
 * x86-64, so the fast paths pay nothing for them. A name without an order
 * suffix does not exist on purpose: the reader must see the order chosen.
 */
#ifndef MESH_ATOMIC_H
#define MESH_ATOMIC_H

#include <stdatomic.h>
#include <stdint.h>

#define mesh_load_relaxed(p)         atomic_load_explicit((p), memory_order_relaxed)
#define mesh_load_acquire(p)         atomic_load_explicit((p), memory_order_acquire)
#define mesh_load_seq_cst(p)         atomic_load_explicit((p), memory_order_seq_cst)
#define mesh_store_relaxed(p, v)     atomic_store_explicit((p), (v), memory_order_relaxed)
#define mesh_store_release(p, v)     atomic_store_explicit((p), (v), memory_order_release)
#define mesh_fetch_and_seq_cst(p, v) atomic_fetch_and_explicit((p), (v), memory_order_seq_cst)
#define mesh_fetch_and_acq_rel(p, v) atomic_fetch_and_explicit((p), (v), memory_order_acq_rel)
#define mesh_fetch_or_acq_rel(p, v)  atomic_fetch_or_explicit((p), (v), memory_order_acq_rel)
#define mesh_fetch_add_seq_cst(p, v) atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define mesh_fetch_sub_seq_cst(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_seq_cst)
#define mesh_exchange_seq_cst(p, v)  atomic_exchange_explicit((p), (v), memory_order_seq_cst)
#define mesh_store_seq_cst(p, v)     atomic_store_explicit((p), (v), memory_order_seq_cst)
#define mesh_fetch_or_seq_cst(p, v)  atomic_fetch_or_explicit((p), (v), memory_order_seq_cst)
#define mesh_fetch_add_relaxed(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define mesh_exchange_acq_rel(p, v)  atomic_exchange_explicit((p), (v), memory_order_acq_rel)
#define mesh_cas_strong_acq_rel(p, expected, desired) \
  atomic_compare_exchange_strong_explicit((p), (expected), (desired), \
                                          memory_order_acq_rel, memory_order_acquire)

#endif
