fn main() {
    println!("{}", watcher::kernel::EBPF_OBJECT.len());
}
