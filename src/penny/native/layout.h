/*
 * layout.h: the fixed byte layouts the native core compiles in.  No
 * Python.h.  Where each structure lives in the region is decided by
 * penny/layout.py alone (and told to the core at run time); what is inside
 * one structure is fixed here.
 */
#ifndef PENNY_LAYOUT_H
#define PENNY_LAYOUT_H

/* ---- deque header (offsets inside one deque, all 64-byte separated) ---- */
#define DQ_TOP 0        /* int64, written by thieves (CAS) and the owner (CAS) */
#define DQ_BOTTOM 64    /* int64, written by the owner only */
#define DQ_MASK 128     /* uint64, capacity - 1, written once at init */
#define DQ_RING 192     /* uint64 ring[capacity] */

/* ---- MPMC ring header ---- */
#define Q_ENQ 0         /* uint64 enqueue position */
#define Q_DEQ 64        /* uint64 dequeue position */
#define Q_MASK 128      /* uint64 capacity - 1 */
#define Q_SLOTS 192     /* {uint64 seq; uint64 value}[capacity] */

#endif /* PENNY_LAYOUT_H */
