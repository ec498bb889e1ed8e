fn main() {
    println!("shoptet-proxy {}", shoptet_proxy::VERSION);
}
