# Shared by the load benches (sourced): the medians and ranges they report, and the head of
# the nginx configurations they start.

# the median of the numbers on stdin, one a line
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# the lowest and highest of them, as "lo-hi" with two decimals
range() { sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}'; }

# The main context of an nginx configuration: two workers in the foreground, the pid file and
# error log named NAME in DIR (usage: nginx_main DIR NAME).
nginx_main() {
  cat <<NGINX
worker_processes 2;
daemon off;
pid $1/$2.pid;
error_log $1/$2-error.log warn;
events { worker_connections 4096; }
NGINX
}
