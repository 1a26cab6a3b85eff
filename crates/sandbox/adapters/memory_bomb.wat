;; memory_bomb: grows memory a page at a time and fills each new page, so every byte it is given
;; becomes resident, until growth fails; then traps.
(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "run") (param i32 i32) (result i64)
    (local $page i32)
    (loop $grow
      (local.set $page (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $page) (i32.const -1))
        (then
          (memory.fill (i32.shl (local.get $page) (i32.const 16)) (i32.const 0xAA) (i32.const 65536))
          (br $grow))))
    unreachable))
